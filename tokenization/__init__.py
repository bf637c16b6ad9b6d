"""Tokenizers and text preparation for REALM: WordPiece tokenizers, corpus -> blocks, reader inputs, answers."""

from .answers import exact_match, f1_score, has_answer, load_qa_file, normalize_answer, regex_match
from .blocks import split_into_blocks
from .corpus import CorpusError, load_corpus
from .qa_metrics import evaluate_predictions, gold_block_recall, retrieval_recall
from .sentences import split_sentences
from .tokenization_realm import RealmTokenizer, RealmTokenizerFast

__all__ = [
    "CorpusError",
    "RealmTokenizer",
    "RealmTokenizerFast",
    "evaluate_predictions",
    "exact_match",
    "f1_score",
    "gold_block_recall",
    "has_answer",
    "load_corpus",
    "load_qa_file",
    "normalize_answer",
    "regex_match",
    "retrieval_recall",
    "split_into_blocks",
    "split_sentences",
]
