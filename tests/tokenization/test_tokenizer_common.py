"""What transformers' REALM tokenizer tests and its common tokenizer tests checked, for both REALM tokenizers
(issue 15, item 1): WordPiece pieces, normalisation options, unknown and invisible text, decoding, the special-token
layout, offsets, batch shapes, padding and truncation, and save/load round trips with added tokens."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import modeling_realm  # noqa: F401  (registers the Auto classes)
from tests.helpers import VOCAB, vocab_ids
from tokenization import RealmTokenizer, RealmTokenizerFast
from tokenization.offsets import with_offsets

CLASSES = [RealmTokenizer, RealmTokenizerFast]
TEXTS = ["Who was Alan Turing?", "The Eiffel Tower is in Paris, France.", "paris"]


def make(tokenizer_class, **options):
    return tokenizer_class(vocab_file=str(VOCAB), **options)


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_words_split_into_lower_cased_wordpieces_without_accents(tokenizer_class):
    tokenizer = make(tokenizer_class)
    tokens = tokenizer.tokenize("UNaffÁble,Paris!")
    assert tokens == ["un", "##aff", "##able", ",", "paris", "!"]
    assert tokenizer.convert_tokens_to_ids(tokens) == vocab_ids(*tokens)


@pytest.mark.parametrize("tokenizer_class", CLASSES)
@pytest.mark.parametrize("options, expected", [
    ({}, ["eiffel", "paris", "[UNK]", "[UNK]"]),
    ({"strip_accents": False}, ["[UNK]", "paris", "[UNK]", "[UNK]"]),  # "éiffel" is not in the vocabulary
    ({"do_lower_case": False}, ["[UNK]", "[UNK]", "[UNK]", "[UNK]"]),  # the vocabulary is lower case
    ({"tokenize_chinese_chars": False}, ["eiffel", "paris", "[UNK]"]),  # the two characters stay one word
])
def test_normalisation_options(tokenizer_class, options, expected):
    assert make(tokenizer_class, **options).tokenize("Éiffel Paris 博推") == expected


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_unknown_empty_and_invisible_text(tokenizer_class):
    tokenizer = make(tokenizer_class)
    assert tokenizer.tokenize("") == []
    assert tokenizer.tokenize("unaffablex paris") == ["[UNK]", "paris"]  # a whole unknown word, not its pieces
    assert tokenizer.tokenize("\xad") == []  # a soft hyphen alone is nothing
    assert tokenizer.tokenize("pa\x05ris \u200b") == ["paris"]  # control characters are dropped


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_decoding_joins_wordpieces(tokenizer_class):
    tokenizer = make(tokenizer_class)
    input_ids = tokenizer("UNaffÁble,Paris!").input_ids
    assert tokenizer.decode(input_ids) == "[CLS] unaffable, paris! [SEP]"
    assert tokenizer.decode(input_ids, skip_special_tokens=True) == "unaffable, paris!"
    assert tokenizer.batch_decode([input_ids, input_ids[:2]], skip_special_tokens=True) == ["unaffable, paris!", "un"]


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_special_token_layout_of_one_and_two_sequences(tokenizer_class):
    tokenizer = make(tokenizer_class)
    first, second = vocab_ids("paris", "is"), vocab_ids("france")
    cls, sep = vocab_ids("[CLS]", "[SEP]")
    assert tokenizer.build_inputs_with_special_tokens(first) == [cls, *first, sep]
    pair = tokenizer.build_inputs_with_special_tokens(first, second)
    assert pair == [cls, *first, sep, *second, sep]
    assert tokenizer.create_token_type_ids_from_sequences(first, second) == [0, 0, 0, 0, 1, 1]
    assert tokenizer.get_special_tokens_mask(pair, already_has_special_tokens=True) == [1, 0, 0, 1, 0, 1]
    assert tokenizer.num_special_tokens_to_add(pair=True) == 3
    encoded = tokenizer("paris is", "france")
    assert encoded.input_ids == pair and encoded.token_type_ids == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_offsets_of_accented_words_and_special_tokens(tokenizer_class):
    tokenizer = with_offsets(make(tokenizer_class))  # the slow one through its fast twin
    encoded = tokenizer("A, Naïve [MASK] paris.", return_offsets_mapping=True)
    assert tokenizer.convert_ids_to_tokens(encoded.input_ids) == \
        ["[CLS]", "a", ",", "[UNK]", "[MASK]", "paris", ".", "[SEP]"]
    assert encoded.offset_mapping == [(0, 0), (0, 1), (1, 2), (3, 8), (9, 15), (16, 21), (21, 22), (0, 0)]


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_batches_pad_truncate_and_stack(tokenizer_class):
    tokenizer = make(tokenizer_class)
    lengths = [len(tokenizer(text).input_ids) for text in TEXTS]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (3, max(lengths)) and batch[key].dtype == torch.long
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
    assert tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="np")["input_ids"].shape == (3, 16)
    assert tokenizer(TEXTS, padding=True, pad_to_multiple_of=8, return_tensors="pt").input_ids.shape[1] % 8 == 0
    cut = tokenizer(TEXTS, truncation=True, max_length=5)
    assert [len(ids) for ids in cut.input_ids] == [5, 5, 3] and all(ids[-1] == tokenizer.sep_token_id for ids in
                                                                    cut.input_ids)
    tokenizer.padding_side = "left"
    left = tokenizer(TEXTS, padding=True, return_tensors="np")
    assert left["attention_mask"][2, 0] == 0 and left["attention_mask"][2, -1] == 1
    assert isinstance(left["input_ids"], np.ndarray)


@pytest.mark.parametrize("tokenizer_class", CLASSES)
def test_save_and_reload_keep_settings_and_added_tokens(tokenizer_class, tmp_path):
    tokenizer = make(tokenizer_class, model_max_length=32, strip_accents=False)
    tokenizer.add_tokens(["zzword"])
    tokenizer.add_tokens(["[ENT]"], special_tokens=True)
    text = "zzword [ENT] Éiffel in paris"
    expected = tokenizer(text).input_ids
    assert expected[1:3] == [106, 107]
    tokenizer.save_pretrained(tmp_path)
    for reloaded in (tokenizer_class.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert reloaded(text).input_ids == expected
        assert len(reloaded) == len(tokenizer) == 108 and reloaded.model_max_length == 32
        assert str(reloaded.added_tokens_decoder[107]) == "[ENT]" and reloaded.added_tokens_decoder[107].special
    assert isinstance(AutoTokenizer.from_pretrained(tmp_path), RealmTokenizerFast)


@pytest.mark.parametrize("options", [{}, {"do_lower_case": False}])
def test_slow_and_fast_give_the_same_tokens_and_ids(options):
    slow, fast = make(RealmTokenizer, **options), make(RealmTokenizerFast, **options)
    texts = TEXTS + ["UNaffÁble,running! 1912-1954", "  tabs\tand\nnew lines  "]
    for text in texts:
        assert slow.tokenize(text) == fast.tokenize(text), text
    assert slow(texts, texts[::-1]).input_ids == fast(texts, texts[::-1]).input_ids
