"""The slow RealmTokenizer feeds every open-QA path (reader inputs, training batches, answer(), a given context)
with the results of the fast one (issue 15, item 2)."""

import numpy as np
import pytest
import torch

from modeling_realm.openqa.answering import read_context
from modeling_realm.openqa.batches import training_batch
from tests.helpers import VOCAB
from tests.modeling_realm.openqa.test_answering import fixture_model
from tokenization import RealmTokenizer, RealmTokenizerFast
from tokenization.reader_inputs import reader_inputs

BLOCKS = [["Alan Mathison Turing was born in London, England.", "The Eiffel Tower is in Paris."],
          ["Paris is the capital of France; the Seine is its river.", "A cute cat met an adorable dog."]]


@pytest.fixture(scope="module")
def tokenizers():
    return RealmTokenizer(vocab_file=str(VOCAB)), RealmTokenizerFast(vocab_file=str(VOCAB))


@pytest.mark.parametrize("max_length", [12, 64])  # cut blocks, whole blocks
def test_reader_inputs_equal(tokenizers, max_length):
    slow, fast = tokenizers
    questions = ["who was alan turing?", "what is the capital of france?"]
    expected = reader_inputs(fast, questions, BLOCKS, max_length)
    got = reader_inputs(slow, questions, BLOCKS, max_length)
    for name in expected.__dataclass_fields__:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert (got.offsets >= 0).any()


@pytest.mark.parametrize("match, answers", [("string", [["london"], ["paris", "france"]]),
                                            ("regex", [["lon.on"], ["par+is"]])])
def test_training_batches_equal(tokenizers, match, answers):
    slow, fast = tokenizers
    model, _, cases = fixture_model("tiny")
    questions = [case["question"] for case in cases["questions"]][:2]
    expected = training_batch(model, fast, questions, answers, match=match)
    got = training_batch(model, slow, questions, answers, match=match)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_answers_equal(tokenizers):
    slow, fast = tokenizers
    model, _, cases = fixture_model("google")
    questions = [case["question"] for case in cases["questions"]]
    expected = model.answer(questions, top_k=3)
    model.tokenizer = slow
    got = model.answer(questions, top_k=3)
    assert [[{k: v for k, v in a.items() if k != "score"} for a in row] for row in got] == \
        [[{k: v for k, v in a.items() if k != "score"} for a in row] for row in expected]
    np.testing.assert_allclose([a["score"] for row in got for a in row],
                               [a["score"] for row in expected for a in row], atol=1e-6)


def test_a_given_context_reads_equal(tokenizers):
    slow, fast = tokenizers
    model, _, _ = fixture_model("tiny")
    question = "who was alan mathison turing, the famous british mathematician?" * 2  # shortened to half a window
    context = " ".join(text for row in BLOCKS for text in row)
    expected = read_context(model, fast, question, context, top_k=3)
    got = read_context(model, slow, question, context, top_k=3)
    assert [a["answer"] for a in got] == [a["answer"] for a in expected] and len(got) == 3
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], abs=1e-6)
