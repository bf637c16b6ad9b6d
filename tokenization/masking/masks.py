"""Masked queries for REALM pretraining: salient spans, random tokens or random spans, behind one switch.

`make_masked_batch(tokenizer, texts, masking, rng)` tokenises `texts` (`[CLS] text [SEP]`, cut and padded to
`max_length`) and masks them in one of three ways, the ablation of REALM's Table 2:

- `"salient"` (REALM's default): one salient span (named entity or date, see `salient_spans`) per sentence, every
  wordpiece of the span replaced by `[MASK]`. Character spans are mapped to wordpieces through the fast tokenizer's
  offsets; a span cut by truncation is not masked. A text with no maskable salient span falls back to
  `fallback` masking (random spans by default) and a log line says how many texts did.
- `"random_token"`: BERT's recipe: each wordpiece is chosen with `probability` (0.15); a chosen one becomes
  `[MASK]` 80% of the time, a random non-special wordpiece 10%, and stays itself 10%.
- `"random_span"`: SpanBERT-style contiguous runs of wordpieces, widths drawn from Geometric(0.2) capped at
  `max_span_width`, until about `probability` of the wordpieces are masked; every masked wordpiece becomes `[MASK]`
  (as salient spans do, so the ablation changes what is masked, not how).

Every mode masks at least one wordpiece of every non-empty text, never a special token or padding, and gives
`labels` equal to the original ids at masked positions and -100 elsewhere. The result depends only on the inputs and
the seed.
"""

import logging

import numpy as np
import torch

from tokenization.masking.salient_spans import as_generator, find_salient_spans_batch, salient_spans_per_sentence
from tokenization.offsets import with_offsets

logger = logging.getLogger(__name__)

MASKINGS = ("salient", "random_token", "random_span")
FALLBACKS = ("random_span", "random_token")
DEFAULT_QUERY_LENGTH = 96  # ARCHITECTURE.md, the REALM recipe
IGNORE_INDEX = -100
SPAN_GEOMETRIC_P = 0.2  # SpanBERT: mean width about 3.8 wordpieces before the cap


def make_masked_batch(tokenizer, texts: list[str], masking: str = "salient", rng=None,
                      max_length: int = DEFAULT_QUERY_LENGTH, spans=None, probability: float = 0.15,
                      max_span_width: int = 10, backend: str = "auto", fallback: str = "random_span") -> dict:
    """Tokenise and mask `texts` for the masked language model.

    Args:
        tokenizer: a BERT WordPiece tokenizer (`RealmTokenizerFast`, `BertTokenizerFast`; a slow one is read
            through its fast twin, `offsets.with_offsets`).
        texts (`list[str]`): the queries (blocks or parts of blocks).
        masking (`str`): `"salient"`, `"random_token"` or `"random_span"`.
        rng (`int` or `numpy.random.Generator`, *optional*): seed or generator; the same seed gives the same batch.
        max_length (`int`): wordpieces per row, special tokens included (96 in REALM).
        spans (*optional*): for `"salient"`, the candidate spans of each text (`[[start, end], ...]` per text, e.g.
            the `salient_spans` column of `add_salient_spans`); found with `find_salient_spans` when None. One
            span per sentence is drawn from them here.
        probability (`float`): the share of wordpieces masked by `"random_token"` and `"random_span"` (and by the
            salient fallback).
        max_span_width (`int`): the widest random span, in wordpieces.
        backend (`str`): salient span backend when `spans` is None (`"auto"`, `"spacy"`, `"regex"`).
        fallback (`str`): masking for texts without a salient span: `"random_span"` or `"random_token"`.

    Returns:
        `dict` of `torch.long` tensors `[batch, max_length]`: `input_ids` (masked), `attention_mask`,
        `token_type_ids` and `labels`.
    """
    if masking not in MASKINGS:
        raise ValueError(f"masking={masking!r} is not one of {MASKINGS}; pass masking='salient' (REALM), "
                         "'random_token' (BERT) or 'random_span' (SpanBERT-style).")
    _check_probability(probability)
    rng = as_generator(rng)
    texts = _check_texts(texts)
    if masking == "random_token":
        return mask_random_tokens(tokenizer, texts, rng, max_length, probability)
    if masking == "random_span":
        return mask_random_spans(tokenizer, texts, rng, max_length, probability, max_span_width)
    if spans is None:
        spans = [[span[:2] for span in row] for row in find_salient_spans_batch(texts, backend=backend)]
    _check_spans(texts, spans)
    chosen = [salient_spans_per_sentence(text, rng, candidates) for text, candidates in zip(texts, spans)]
    return mask_salient_spans(tokenizer, texts, chosen, max_length, rng, fallback, probability, max_span_width)


def mask_salient_spans(tokenizer, texts: list[str], spans, max_length: int = DEFAULT_QUERY_LENGTH, rng=None,
                       fallback: str = "random_span", probability: float = 0.15, max_span_width: int = 10) -> dict:
    """Replace every wordpiece of the given character spans with `[MASK]`.

    Args:
        spans: the spans to mask, `(start_char, end_char)` per span, a list per text (all of them are masked: pick
            one per sentence first with `salient_spans_per_sentence`, or use `make_masked_batch`).
        rng, fallback, probability, max_span_width: the masking of texts none of whose spans survive truncation
            (or that have none), as in `make_masked_batch`.

    Returns:
        as `make_masked_batch`.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is not one of {FALLBACKS}; pass 'random_span' or 'random_token'.")
    texts = _check_texts(texts)
    _check_spans(texts, spans)
    encoded = _encode(tokenizer, texts, max_length)
    masked = np.zeros_like(encoded["candidate"])  # [batch, seq]
    for row, (text, row_spans) in enumerate(zip(texts, spans)):
        masked[row] = _span_positions(text, encoded["offsets"][row], encoded["candidate"][row], row_spans)
    missing = np.flatnonzero(~masked.any(axis=1) & encoded["candidate"].any(axis=1))
    if len(missing):
        logger.info("%d of %d texts have no salient span within %d wordpieces; masked with %s instead.",
                    len(missing), len(texts), max_length, fallback)
        rng = as_generator(rng)
        for row in missing:
            masked[row] = _fallback_positions(encoded["candidate"][row], rng, fallback, probability, max_span_width)
    input_ids = np.where(masked, tokenizer.mask_token_id, encoded["input_ids"])  # [batch, seq]
    return _to_batch(encoded, input_ids, masked)


def mask_random_tokens(tokenizer, texts: list[str], rng=None, max_length: int = DEFAULT_QUERY_LENGTH,
                       probability: float = 0.15) -> dict:
    """BERT masking: each wordpiece chosen with `probability`; 80% `[MASK]`, 10% random wordpiece, 10% unchanged.

    A text none of whose wordpieces were drawn gets one chosen uniformly, so every row has a label.
    """
    _check_probability(probability)
    rng = as_generator(rng)
    encoded = _encode(tokenizer, _check_texts(texts), max_length)
    candidate = encoded["candidate"]  # [batch, seq]
    masked = candidate & (rng.random(candidate.shape) < probability)  # [batch, seq]
    for row in np.flatnonzero(~masked.any(axis=1) & candidate.any(axis=1)):
        masked[row, rng.choice(np.flatnonzero(candidate[row]))] = True
    action = rng.random(candidate.shape)  # [batch, seq]
    replacements = rng.choice(_ordinary_ids(tokenizer), size=candidate.shape)  # [batch, seq]
    input_ids = encoded["input_ids"].copy()
    input_ids[masked & (action < 0.8)] = tokenizer.mask_token_id
    randomised = masked & (action >= 0.8) & (action < 0.9)
    input_ids[randomised] = replacements[randomised]
    return _to_batch(encoded, input_ids, masked)


def mask_random_spans(tokenizer, texts: list[str], rng=None, max_length: int = DEFAULT_QUERY_LENGTH,
                      probability: float = 0.15, max_span_width: int = 10) -> dict:
    """Mask non-overlapping random runs of wordpieces (widths Geometric(0.2) capped at `max_span_width`) with
    `[MASK]` until `round(probability * wordpieces)` (at least 1) of each text's wordpieces are masked."""
    _check_probability(probability)
    if not isinstance(max_span_width, int) or max_span_width < 1:
        raise ValueError(f"max_span_width must be a positive int, got {max_span_width!r}; pass e.g. 10.")
    rng = as_generator(rng)
    encoded = _encode(tokenizer, _check_texts(texts), max_length)
    masked = np.zeros_like(encoded["candidate"])  # [batch, seq]
    for row, candidate in enumerate(encoded["candidate"]):
        masked[row] = _random_span_positions(candidate, rng, probability, max_span_width)
    input_ids = np.where(masked, tokenizer.mask_token_id, encoded["input_ids"])  # [batch, seq]
    return _to_batch(encoded, input_ids, masked)


# ---- positions ---------------------------------------------------------------------------------------------------
def _span_positions(text: str, offsets: np.ndarray, candidate: np.ndarray, spans) -> np.ndarray:
    """Wordpieces `[seq]` (bool) overlapping any of `spans`, leaving out spans that truncation cut."""
    starts, ends = offsets[:, 0], offsets[:, 1]  # [seq]
    covered = int(ends[candidate].max()) if candidate.any() else 0
    truncated = bool(text[covered:].strip())
    positions = np.zeros_like(candidate)
    for span in spans:
        start, end = int(span[0]), int(span[1])
        inside = candidate & (starts < end) & (ends > start)  # [seq]
        if inside.any() and not (truncated and end > covered):
            positions |= inside
    return positions


def _random_span_positions(candidate: np.ndarray, rng: np.random.Generator, probability: float,
                           max_span_width: int) -> np.ndarray:
    """Random non-overlapping runs over the candidate wordpieces of one row, `[seq]` (bool)."""
    indices = np.flatnonzero(candidate)  # contiguous for a single-segment encoding
    chosen = np.zeros(len(indices), dtype=bool)
    budget = max(1, round(probability * len(indices))) if len(indices) else 0
    for _ in range(10 * budget):
        remaining = budget - int(chosen.sum())
        if remaining <= 0:
            break
        width = int(min(rng.geometric(SPAN_GEOMETRIC_P), max_span_width, remaining))
        start = int(rng.integers(len(indices) - width + 1))
        if not chosen[start:start + width].any():
            chosen[start:start + width] = True
    positions = np.zeros_like(candidate)
    positions[indices[chosen]] = True
    return positions


def _fallback_positions(candidate, rng, fallback, probability, max_span_width) -> np.ndarray:
    if fallback == "random_span":
        return _random_span_positions(candidate, rng, probability, max_span_width)
    positions = candidate & (rng.random(candidate.shape) < probability)  # [seq]
    if not positions.any():
        positions[rng.choice(np.flatnonzero(candidate))] = True
    return positions


# ---- encoding ----------------------------------------------------------------------------------------------------
def _encode(tokenizer, texts: list[str], max_length: int) -> dict:
    """`[CLS] text [SEP]` padded to `max_length`, as numpy arrays, with offsets and the maskable positions."""
    tokenizer = with_offsets(tokenizer)  # a slow tokenizer: its fast twin (same ids, with offsets)
    if tokenizer.mask_token_id is None:
        raise ValueError("The tokenizer has no [MASK] token; use a BERT WordPiece vocabulary that has one.")
    if not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length must be an int >= 3 ([CLS] + a wordpiece + [SEP]), got {max_length!r}.")
    encoding = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length",
                         return_offsets_mapping=True, return_special_tokens_mask=True, return_token_type_ids=True,
                         return_attention_mask=True)
    arrays = {key: np.asarray(encoding[key], dtype=np.int64) for key in
              ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_mapping")}
    candidate = (arrays["special_tokens_mask"] == 0) & (arrays["attention_mask"] == 1)  # [batch, seq]
    return {"input_ids": arrays["input_ids"], "attention_mask": arrays["attention_mask"],
            "token_type_ids": arrays["token_type_ids"], "offsets": arrays["offset_mapping"], "candidate": candidate}


def _to_batch(encoded: dict, input_ids: np.ndarray, masked: np.ndarray) -> dict:
    labels = np.where(masked, encoded["input_ids"], IGNORE_INDEX)  # [batch, seq]
    return {"input_ids": torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            "attention_mask": torch.from_numpy(encoded["attention_mask"]),
            "token_type_ids": torch.from_numpy(encoded["token_type_ids"]),
            "labels": torch.from_numpy(labels.astype(np.int64))}


def _ordinary_ids(tokenizer) -> np.ndarray:
    """Every id of the vocabulary but the special tokens: the replacements of BERT's 10% random case."""
    ids = np.setdiff1d(np.arange(len(tokenizer)), np.asarray(tokenizer.all_special_ids))
    if len(ids) == 0:
        raise ValueError("The tokenizer's vocabulary has only special tokens; random-token masking needs words.")
    return ids


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("texts must be a list of strings; wrap a single text as [text].")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one text to mask.")
    return texts


def _check_spans(texts: list[str], spans) -> None:
    if spans is None or len(spans) != len(texts):
        raise ValueError(f"spans must hold one list of (start, end) spans per text: got "
                         f"{None if spans is None else len(spans)} lists for {len(texts)} texts.")


def _check_probability(probability: float) -> None:
    if not 0 < probability < 1:
        raise ValueError(f"probability must lie strictly between 0 and 1, got {probability!r}; BERT uses 0.15.")
