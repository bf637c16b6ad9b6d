"""Tokenizers and text preparation for REALM: WordPiece tokenizers with `batch_encode_candidates`."""

from .tokenization_realm import RealmTokenizer, RealmTokenizerFast

__all__ = ["RealmTokenizer", "RealmTokenizerFast"]
