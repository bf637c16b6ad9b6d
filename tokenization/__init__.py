"""Text -> token ids for REALM: the WordPiece tokenizers, corpora, sentences, corpus -> blocks, the token inputs of the
block tower and the reader, and the masked queries of pretraining. Nothing here knows a model or an index.

The floor plan of all three packages is in ARCHITECTURE.md at the repository root.
"""

from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN, block_inputs
from tokenization.blocks import DEFAULT_MAX_BLOCK_LENGTH, split_into_blocks
from tokenization.corpus import CorpusError, load_corpus
from tokenization.jsonl import jsonl_values
from tokenization.masking import (
    DEFAULT_QUERY_LENGTH,
    IGNORE_INDEX,
    MASKINGS,
    add_salient_spans,
    find_salient_spans,
    make_masked_batch,
    mask_random_spans,
    mask_random_tokens,
    mask_salient_spans,
    salient_spans_per_sentence,
)
from tokenization.reader_inputs import ReaderBatch, answer_token_spans, char_span_to_tokens, reader_inputs
from tokenization.sentences import is_blank, split_sentences
from tokenization.tokenization_realm import RealmTokenizer, RealmTokenizerFast

__all__ = [
    "DEFAULT_BLOCK_SEQ_LEN",
    "DEFAULT_MAX_BLOCK_LENGTH",
    "DEFAULT_QUERY_LENGTH",
    "IGNORE_INDEX",
    "MASKINGS",
    "CorpusError",
    "ReaderBatch",
    "RealmTokenizer",
    "RealmTokenizerFast",
    "add_salient_spans",
    "answer_token_spans",
    "block_inputs",
    "char_span_to_tokens",
    "find_salient_spans",
    "is_blank",
    "jsonl_values",
    "load_corpus",
    "make_masked_batch",
    "mask_random_spans",
    "mask_random_tokens",
    "mask_salient_spans",
    "reader_inputs",
    "salient_spans_per_sentence",
    "split_into_blocks",
    "split_sentences",
]
