"""Masked queries for REALM pretraining: salient spans (named entities and dates), random tokens or random spans."""

from tokenization.masking.masks import (
    DEFAULT_QUERY_LENGTH,
    IGNORE_INDEX,
    MASKINGS,
    make_masked_batch,
    mask_random_spans,
    mask_random_tokens,
    mask_salient_spans,
)
from tokenization.masking.salient_spans import add_salient_spans, find_salient_spans, salient_spans_per_sentence

__all__ = [
    "DEFAULT_QUERY_LENGTH",
    "IGNORE_INDEX",
    "MASKINGS",
    "add_salient_spans",
    "find_salient_spans",
    "make_masked_batch",
    "mask_random_spans",
    "mask_random_tokens",
    "mask_salient_spans",
    "salient_spans_per_sentence",
]
