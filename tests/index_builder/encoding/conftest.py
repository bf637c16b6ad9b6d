"""Fixtures of the encoding tests: a tiny retriever with non-trivial weights, and its tokenizer."""

import pytest
import torch

from modeling_realm import RealmRetriever
from tests.helpers import VOCAB, perturb_, tiny_config
from tokenization import RealmTokenizerFast


@pytest.fixture(scope="module")
def retriever():
    torch.manual_seed(0)
    model = RealmRetriever(tiny_config())
    perturb_(model, 1)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))
