"""RealmTokenizer / RealmTokenizerFast: 4.57.6 parity, loading routes and batch_encode_candidates errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import modeling_realm  # noqa: F401  (registers the Auto classes)
from tests.helpers import GOOGLE_TOKENIZER_CONFIG, PARITY, VOCAB, populate_hub_cache, vocab_ids
from tokenization import RealmTokenizer, RealmTokenizerFast

CLASSES = {"RealmTokenizer": RealmTokenizer, "RealmTokenizerFast": RealmTokenizerFast}
CASES = json.loads((PARITY / "tokenizer_cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['class']}-{c['method']}-{len(str(c['text']))}")
def test_matches_transformers_4(case):
    tokenizer = CLASSES[case["class"]](vocab_file=str(VOCAB))
    kwargs = dict(case["kwargs"])
    if case["method"] == "decode":
        assert tokenizer.decode(case["text"], **kwargs) == case["output"]
        return
    if case["method"] == "batch_encode_candidates":
        encoded = tokenizer.batch_encode_candidates(case["text"], **kwargs)
    else:
        encoded = tokenizer(case["text"], kwargs.pop("text_pair", None), **kwargs)
    assert set(encoded) == set(case["output"])
    for key, value in case["output"].items():
        assert np.asarray(encoded[key]).tolist() == value, key


@pytest.mark.parametrize("tokenizer_class", [RealmTokenizer, RealmTokenizerFast])
def test_candidates_stack_into_batch_candidates_length(tokenizer_class):
    tokenizer = tokenizer_class(vocab_file=str(VOCAB))
    text = [["hello world", "paris"], ["the cat", "a dog"], ["who", "what"]]
    encoded = tokenizer.batch_encode_candidates(text, max_length=8, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert encoded[key].shape == (3, 2, 8) and encoded[key].dtype == torch.long
    assert encoded["input_ids"][0, 1].tolist() == vocab_ids("[CLS]", "paris", "[SEP]") + [0] * 5


def test_loads_from_vocab_file_directory_and_hub_id(tmp_path, hub_cache):
    expected = vocab_ids("[CLS]", "who", "was", "alan", "turing", "?", "[SEP]")
    text = "Who was Alan Turing?"
    assert RealmTokenizerFast(vocab_file=str(VOCAB))(text).input_ids == expected
    directory = tmp_path / "tokenizer"
    directory.mkdir()
    shutil.copy(VOCAB, directory / "vocab.txt")
    (directory / "tokenizer_config.json").write_text(json.dumps(GOOGLE_TOKENIZER_CONFIG))
    shutil.copy(PARITY / "tiny" / "RealmEmbedder" / "config.json", directory / "config.json")
    for tokenizer_class in (RealmTokenizer, RealmTokenizerFast):
        assert tokenizer_class.from_pretrained(directory)(text).input_ids == expected
    populate_hub_cache(hub_cache, "someone/realm-tokenizer", directory)
    assert RealmTokenizerFast.from_pretrained("someone/realm-tokenizer")(text).input_ids == expected
    auto = AutoTokenizer.from_pretrained("someone/realm-tokenizer")
    assert isinstance(auto, RealmTokenizerFast) and auto(text).input_ids == expected


def test_saved_fast_tokenizer_reloads_through_auto(tmp_path):
    tokenizer = RealmTokenizerFast(vocab_file=str(VOCAB))
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, RealmTokenizerFast)
    assert reloaded("the eiffel tower").input_ids == tokenizer("the eiffel tower").input_ids


@pytest.mark.parametrize("call, message", [
    (lambda t: t.batch_encode_candidates([["a", "b"]]), "pass max_length"),
    (lambda t: t.batch_encode_candidates(["a", "b"], max_length=5), "list of lists of strings"),
    (lambda t: t.batch_encode_candidates([["a", "b"], ["c"]], max_length=5), r"rows of \[1, 2\] candidates"),
    (lambda t: t.batch_encode_candidates([["a", "b"]], text_pair=[["c"]], max_length=5), "same .* layout"),
    (lambda t: t.batch_encode_candidates([["paris is the capital of france"]], max_length=4),
     "pass truncation=True or a larger max_length"),
])
def test_batch_encode_candidates_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(RealmTokenizerFast(vocab_file=str(VOCAB)))
