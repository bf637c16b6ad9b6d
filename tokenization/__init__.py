"""Tokenizers and text preparation for REALM: WordPiece tokenizers, corpus -> blocks, reader inputs, answers."""

from .answers import exact_match, f1_score, has_answer, load_qa_file, normalize_answer, regex_match
from .blocks import split_into_blocks
from .corpus import CorpusError, load_corpus
from .masking import make_masked_batch, mask_random_spans, mask_random_tokens, mask_salient_spans
from .qa_metrics import evaluate_predictions, gold_block_recall, retrieval_recall
from .salient_spans import add_salient_spans, find_salient_spans, salient_spans_per_sentence
from .sentences import split_sentences
from .tokenization_realm import RealmTokenizer, RealmTokenizerFast

__all__ = [
    "CorpusError",
    "RealmTokenizer",
    "RealmTokenizerFast",
    "add_salient_spans",
    "evaluate_predictions",
    "exact_match",
    "f1_score",
    "find_salient_spans",
    "gold_block_recall",
    "has_answer",
    "load_corpus",
    "load_qa_file",
    "make_masked_batch",
    "mask_random_spans",
    "mask_random_tokens",
    "mask_salient_spans",
    "normalize_answer",
    "regex_match",
    "retrieval_recall",
    "salient_spans_per_sentence",
    "split_into_blocks",
    "split_sentences",
]
