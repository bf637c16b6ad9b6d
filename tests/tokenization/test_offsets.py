"""`with_offsets`: a slow WordPiece tokenizer read through a fast twin with the same ids, or a clear refusal."""

import pytest
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from tests.helpers import VOCAB
from tokenization import RealmTokenizer, RealmTokenizerFast
from tokenization.offsets import with_offsets

TEXTS = ["Who was Alan Mathison Turing?", "UNAFFABLE Éiffel, 1912!", "tower\tcity  river 日本", "zzz ?!"]


def test_fast_tokenizer_is_returned_as_is():
    fast = RealmTokenizerFast(vocab_file=str(VOCAB))
    assert with_offsets(fast) is fast


@pytest.mark.parametrize("options", [{}, {"do_lower_case": False}, {"strip_accents": True},
                                     {"tokenize_chinese_chars": False}])
def test_twin_gives_the_slow_ids_with_offsets(options):
    slow = RealmTokenizer(vocab_file=str(VOCAB), **options)
    twin = with_offsets(slow)
    assert twin.is_fast and with_offsets(slow) is twin  # converted once
    expected = slow(TEXTS, TEXTS[::-1], padding=True)
    got = twin(TEXTS, TEXTS[::-1], padding=True, return_offsets_mapping=True)
    for key in expected:
        assert got[key] == expected[key], key
    assert len(got["offset_mapping"][0]) == len(got["input_ids"][0])
    cut = dict(truncation="only_second", max_length=14, padding="max_length")
    assert twin(TEXTS, TEXTS[::-1], **cut).input_ids == slow(TEXTS, TEXTS[::-1], **cut).input_ids


def test_twin_follows_added_tokens_and_padding_side():
    slow = RealmTokenizer(vocab_file=str(VOCAB))
    first = with_offsets(slow)
    slow.add_tokens(["zzz"])
    slow.add_tokens(["[ENT]"], special_tokens=True)
    slow.padding_side = "left"
    twin = with_offsets(slow)
    assert twin is not first
    text = ["zzz [ENT] paris", "who"]
    assert twin(text, padding=True).input_ids == slow(text, padding=True).input_ids
    assert slow("zzz").input_ids[1] == len(slow) - 2


@pytest.mark.parametrize("options, message", [
    ({"do_basic_tokenize": False}, "do_basic_tokenize=False"),
    ({"never_split": ["paris"]}, "never_split"),
])
def test_settings_a_fast_tokenizer_cannot_reproduce_are_refused(options, message):
    slow = BertTokenizerLegacy(vocab_file=str(VOCAB), **options)
    with pytest.raises(TypeError, match=f"{message}.*RealmTokenizerFast"):
        with_offsets(slow)


def test_a_slow_tokenizer_that_is_not_wordpiece_is_refused():
    class Other:
        is_fast = False

    with pytest.raises(TypeError, match="not BERT WordPiece.*use_fast=True"):
        with_offsets(Other())
