"""Reader inputs and answer spans: what transformers 4.x's retriever tests checked of `RealmRetriever.__call__`
(its concatenated inputs and `block_has_answer`), on this package's `reader_inputs` and `answer_token_spans`
(issue 15, item 1)."""

import torch

from tests.helpers import VOCAB, vocab_ids
from tokenization import RealmTokenizerFast
from tokenization.reader_inputs import answer_token_spans, char_span_to_tokens, reader_inputs

QUESTION = "which city?"
BLOCKS = ["the first block", "paris is the city of the seine", "the city city city of paris"]


def tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


def test_question_and_block_pairs_padded_to_the_longest():
    tok = tokenizer()
    batch = reader_inputs(tok, [QUESTION], [BLOCKS[:2]], max_length=64)
    assert batch.input_ids.shape == (1, 2, 13) and batch.offsets.shape == (1, 2, 13, 2)
    assert tok.convert_ids_to_tokens(batch.input_ids[0, 0]) == \
        ["[CLS]", "which", "city", "?", "[SEP]", "the", "first", "block", "[SEP]"] + ["[PAD]"] * 4
    assert tok.convert_ids_to_tokens(batch.input_ids[0, 1, :5]) == ["[CLS]", "which", "city", "?", "[SEP]"]
    assert batch.attention_mask[0].sum(-1).tolist() == [9, 13]
    assert batch.token_type_ids[0, 0].tolist() == [0] * 5 + [1] * 4 + [0] * 4
    assert batch.block_mask[0, 0].tolist() == [False] * 5 + [True] * 3 + [False] * 5  # block tokens only


def test_offsets_point_into_the_block_text():
    batch = reader_inputs(tokenizer(), [QUESTION], [BLOCKS[1:2]], max_length=64)
    offsets, mask = batch.offsets[0, 0], batch.block_mask[0, 0]
    words = [BLOCKS[1][start:end] for start, end in offsets[mask].tolist()]
    assert words == BLOCKS[1].split()
    assert (offsets[~mask] == -1).all()
    assert char_span_to_tokens(offsets, BLOCKS[1].index("city"), BLOCKS[1].index("city") + 4) == (8, 8)
    assert char_span_to_tokens(offsets, 1, 4) is None  # not on token boundaries


def test_blocks_with_and_without_answers_and_repeated_matches():
    tok = tokenizer()
    batch = reader_inputs(tok, [QUESTION], [BLOCKS], max_length=64)
    answers = tok(["city city", "seine"], add_special_tokens=False).input_ids
    has, starts, ends = answer_token_spans(batch.input_ids[0], batch.block_mask[0], answers)
    assert has.tolist() == [False, True, True]
    # overlapping matches all count, as 4.x matched; -1 pads rows with fewer matches
    assert starts.tolist() == [[-1, -1], [11, -1], [6, 7]]
    assert ends.tolist() == [[-1, -1], [11, -1], [7, 8]]


def test_an_answer_in_the_question_is_not_matched():
    tok = tokenizer()
    batch = reader_inputs(tok, ["which city city?"], [[BLOCKS[0]]], max_length=64)
    has, starts, _ = answer_token_spans(batch.input_ids[0], batch.block_mask[0], [vocab_ids("city", "city")])
    assert has.tolist() == [False] and starts.shape == (1, 0)  # no row has a match: no columns, as 4.x gave


def test_max_length_cuts_the_block_and_the_answers_it_held():
    tok = tokenizer()
    batch = reader_inputs(tok, [QUESTION], [BLOCKS[1:]], max_length=9)
    assert batch.input_ids.shape == (1, 2, 9)
    assert tok.convert_ids_to_tokens(batch.input_ids[0, 0]) == \
        ["[CLS]", "which", "city", "?", "[SEP]", "paris", "is", "the", "[SEP]"]
    has, _, _ = answer_token_spans(batch.input_ids[0], batch.block_mask[0], [vocab_ids("seine"), vocab_ids("city")])
    assert has.tolist() == [False, True]  # "seine" and the first block's "city" were cut off
    assert torch.equal(batch.offsets[0, 0, 5:8, 1], torch.tensor([5, 8, 12]))  # offsets of what is left
