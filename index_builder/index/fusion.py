"""Retrieval modes and the fusion of dense and lexical results into one ranking.

Modes: "dense" (inner products of embeddings, FAISS), "lexical" (BM25 of the query's text) and "hybrid" (both, each
side searched `depth` deep, fused over the union of their candidates). `resolve_mode` picks the default: hybrid when
the index has a lexical part and the query texts are given, lexical with texts only, dense otherwise.

Fusions (for each query, over the union of both sides' candidates; interpolation is the default):
- "rrf", reciprocal rank fusion: score = weight / (RRF_K + dense rank) + (1 - weight) / (RRF_K + lexical rank), ranks
  from 1; a candidate one side did not return gets nothing from that side. Scale-free, so robust to the two sides'
  different score ranges (Cormack et al. 2009; RRF_K = 60 as there).
- "interpolation": score = weight * dense' + (1 - weight) * lexical', where each side's scores are min-max normalised
  over that side's candidates of the query, and a candidate one side did not return takes that side's lowest
  normalised score (0), as pyserini's hybrid search does for a missing side.
Equal fused scores are ordered by block id. `weight` is the share of the dense side, in [0, 1].
"""

import numpy as np

from tokenization.sentences import is_blank

MODES = ("dense", "lexical", "hybrid")
FUSIONS = ("interpolation", "rrf")
DEFAULT_FUSION = "interpolation"  # measured on SQuAD (benchmarks/README.md, section 8): rrf with a weak dense side
# ranked below BM25 alone, interpolation never did
RRF_K = 60
DEFAULT_WEIGHT = 0.5
MIN_DEPTH = 20  # candidates per side for hybrid search: at least this many, and at least k


def resolve_mode(mode, has_lexical: bool, has_embeddings: bool, has_texts: bool) -> str:
    """The mode to search with, or a ValueError saying why the request cannot be served."""
    if mode is None:
        mode = "hybrid" if has_lexical and has_texts and has_embeddings else "lexical" if not has_embeddings \
            else "dense"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (or None for the index's default), got {mode!r}.")
    if mode in ("lexical", "hybrid") and not has_lexical:
        raise ValueError(f"mode={mode!r} needs a lexical part, which this index has none of; add one with "
                         "index.add_lexical() (or `realm-build-index --lexical bm25 --output DIR`), or use "
                         "mode='dense'.")
    if mode in ("lexical", "hybrid") and not has_texts:
        raise ValueError(f"mode={mode!r} searches the queries' texts: pass query_texts=[...].")
    if mode in ("dense", "hybrid") and not has_embeddings:
        raise ValueError(f"mode={mode!r} searches query embeddings: pass query_embeddings ([batch, dimension]).")
    return mode


def check_query_texts(query_texts, batch: int | None) -> list[str]:
    """The query texts as a list of non-blank strings (as many as the query embeddings, when there are some; an
    empty batch is an empty list)."""
    texts = [query_texts] if isinstance(query_texts, str) else list(query_texts)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or is_blank(text)]
    if bad:
        raise ValueError(f"query_texts must be non-empty strings, one per query; items {bad[:10]} are not.")
    if batch is not None and len(texts) != batch:
        raise ValueError(f"Got {len(texts)} query texts for {batch} query embeddings; pass one text per query.")
    return texts


def check_fusion(fusion: str, weight: float) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"weight (the dense side's share) must be a number in [0, 1], got {weight!r}.")


def hybrid_depth(k: int, depth: int | None, total: int) -> int:
    """Candidates to take from each side: `depth` if given (at least k), else max(k, MIN_DEPTH); at most `total`."""
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1):
        raise ValueError(f"depth must be a positive integer, got {depth!r}.")
    return min(total, max(k, depth if depth is not None else MIN_DEPTH))


def fuse(dense_scores, dense_ids, lexical_scores, lexical_ids, k: int, fusion: str = DEFAULT_FUSION,
         weight: float = DEFAULT_WEIGHT):
    """The best `k` of the union of both sides' candidates.

    Args:
        dense_scores, dense_ids: `[batch, c1]`, best first; lexical_scores, lexical_ids: `[batch, c2]`, best first.
    Returns:
        fused scores `[batch, k]` float32 and block ids `[batch, k]` int64, best first.
    """
    check_fusion(fusion, weight)
    batch = len(dense_ids)
    scores = np.zeros((batch, k), dtype=np.float32)
    ids = np.zeros((batch, k), dtype=np.int64)
    for b in range(batch):
        union, fused = _fuse_one(np.asarray(dense_scores[b], np.float64), np.asarray(dense_ids[b], np.int64),
                                 np.asarray(lexical_scores[b], np.float64), np.asarray(lexical_ids[b], np.int64),
                                 fusion, weight)
        if len(union) < k:
            raise ValueError(f"Hybrid search found {len(union)} candidates for query {b}, fewer than k={k}; search "
                             "deeper (depth=...) or ask for fewer blocks.")
        order = np.lexsort((union, -fused))[:k]
        scores[b], ids[b] = fused[order], union[order]
    return scores, ids


def _fuse_one(dense_scores, dense_ids, lexical_scores, lexical_ids, fusion: str, weight: float):
    """(candidate ids `[u]`, fused scores `[u]`) of one query."""
    union = np.union1d(dense_ids, lexical_ids)
    dense_part = _side(union, dense_ids, dense_scores, fusion)
    lexical_part = _side(union, lexical_ids, lexical_scores, fusion)
    return union, weight * dense_part + (1 - weight) * lexical_part


def _side(union: np.ndarray, ids: np.ndarray, scores: np.ndarray, fusion: str) -> np.ndarray:
    """One side's contribution `[u]` to each candidate of `union` (0 where the side did not return it)."""
    if fusion == "rrf":
        values = 1.0 / (RRF_K + np.arange(1, len(ids) + 1))
    else:
        low, high = (scores.min(), scores.max()) if len(scores) else (0.0, 0.0)
        values = (scores - low) / (high - low) if high > low else np.ones_like(scores)
    contribution = np.zeros(len(union))
    contribution[np.searchsorted(union, ids)] = values
    return contribution
