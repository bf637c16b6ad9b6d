"""Exact inner-product top-k, chunk by chunk: over memory-mapped embeddings in numpy (the fallback and the test
oracle), and over an in-memory matrix with torch matrix products (batched search of a Flat index)."""

import numpy as np
import torch

CHUNK_ROWS = 1 << 16


def exact_top_k(queries: np.ndarray, embeddings, k: int, row_ids: np.ndarray | None = None):
    """Top-k rows of `embeddings` (sliceable `[n, d]`) for each query `[b, d]`, best first.

    Returns scores `[b, k]` float32 and ids `[b, k]` int64 (row numbers, or `row_ids[row]` when given).
    Within the returned k, equal scores are ordered by row.
    """
    n = len(embeddings)
    best_scores = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, n, CHUNK_ROWS):
        # [b, chunk]
        scores = queries @ np.asarray(embeddings[start:start + CHUNK_ROWS], dtype=np.float32).T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1], dtype=np.int64), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        best_scores, best_rows = _keep_top(best_scores, best_rows, k)
    ids = best_rows if row_ids is None else np.asarray(row_ids)[best_rows]
    return best_scores.astype(np.float32), ids.astype(np.int64)


def _keep_top(scores: np.ndarray, rows: np.ndarray, k: int):
    if scores.shape[1] > k:
        # [b, k] unordered best, in O(width)
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, rows = np.take_along_axis(scores, part, axis=1), np.take_along_axis(rows, part, axis=1)
    # score descending, then row ascending
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


# Rows scored per matrix product in `gemm_top_k`: chunk x batch scores of 8 MB stay in cache. With 64 queries (32k
# rows) this measured fastest on 2 cores (benchmarks/README.md, section 1).
GEMM_SCORES_PER_CHUNK = 1 << 21
# Rows per group in `gemm_top_k`: the best rows are looked for among the groups with the best maximum. A maximum over
# 32 rows is an elementwise pass over the [chunk, batch] scores, ~5x cheaper than a top-k over them.
GROUP_ROWS = 32
# Precisions a Flat index can score in (search parameter `precision`); bfloat16 scores are re-scored in float32.
PRECISIONS = ("float32", "bfloat16")


def gemm_top_k(queries: np.ndarray, vectors: np.ndarray, k: int, low_vectors: torch.Tensor | None = None):
    """Exact top-k rows of the in-memory float32 matrix `vectors` `[n, d]` for `queries` `[b, d]`, best first.

    One torch matrix product per chunk of rows; each group of GROUP_ROWS rows keeps its best score, the best groups
    of each query are kept, and the rows of the final best groups are scored again exactly in float32. A row of
    the true top-k lies in one of the k groups with the best maxima, so the result is exact; this is about 3x
    FAISS's own Flat search for batches of queries on CPU (its BLAS blocks are small and each result goes through
    a heap). With `low_vectors` (`vectors` in bfloat16, from `low_precision_copy`) the chunks are scored in
    bfloat16 (about 2x faster on CPUs with AVX-512 BF16, half the memory read) and `candidate_width(k)` groups are
    kept, so that rows whose bfloat16 rounding moved them below others still reach the float32 scoring.
    Returns scores `[b, k]` float32 and row numbers `[b, k]` int64; equal scores are ordered by row as in
    `exact_top_k`.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))  # [b, d]
    matrix = torch.from_numpy(vectors)  # [n, d], shared with FAISS, never written
    with torch.no_grad():
        if low_vectors is None:
            rows = _best_groups(q, matrix, k)
        else:
            rows = _best_groups(q.to(low_vectors.dtype), low_vectors, candidate_width(k, len(low_vectors)))
        valid = rows < len(matrix)  # [b, c]: the last group may extend past the end
        candidates = matrix[rows.clamp(max=len(matrix) - 1)]  # [b, c, d] float32
        exact = torch.einsum("bd,bcd->bc", q, candidates).masked_fill(~valid, float("-inf"))  # [b, c]
    return _keep_top(exact.numpy(), rows.numpy(), k)


def candidate_width(k: int, n: int) -> int:
    """Groups kept per query from bfloat16 scores for float32 re-scoring: bfloat16 keeps 8 bits of mantissa, so
    scores near the k-th best tie or swap; 4 * k + 32 groups left recall@5 at 1.0 on the synthetic 1M- and
    13.35M-block benchmarks (benchmarks/README.md, section 1)."""
    return min(n, 4 * k + 32)


def low_precision_copy(vectors: np.ndarray, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A `dtype` copy of `vectors` `[n, d]` float32, converted chunk by chunk (no float32 temporary)."""
    low = torch.empty(vectors.shape, dtype=dtype)  # [n, d]
    for start in range(0, len(vectors), CHUNK_ROWS):
        low[start:start + CHUNK_ROWS] = torch.from_numpy(vectors[start:start + CHUNK_ROWS])
    return low


def _best_groups(q: torch.Tensor, matrix: torch.Tensor, width: int) -> torch.Tensor:
    """The rows `[b, width * GROUP_ROWS]` of the `width` groups of GROUP_ROWS rows of `matrix` `[n, d]` with the
    best maximum score for each query of `q` `[b, d]` (same dtype); row numbers may run past n in the last group."""
    b = len(q)
    chunk = max(GROUP_ROWS, GEMM_SCORES_PER_CHUNK // max(1, b) // GROUP_ROWS * GROUP_ROWS)
    kept_maxima, kept_groups = [], []
    for start in range(0, len(matrix), chunk):
        scores = matrix[start:start + chunk] @ q.T  # [c, b]
        pad = -len(scores) % GROUP_ROWS
        if pad:
            scores = torch.cat([scores, scores.new_full((pad, b), float("-inf"))])  # [c + pad, b]
        maxima = scores.view(-1, GROUP_ROWS, b).amax(dim=1).T  # [b, groups]
        top, groups = maxima.topk(min(width, maxima.shape[1]), dim=1)  # [b, width]
        kept_maxima.append(top.float())
        kept_groups.append(groups + start // GROUP_ROWS)
    maxima, groups = torch.cat(kept_maxima, dim=1), torch.cat(kept_groups, dim=1)  # [b, chunks * width]
    if maxima.shape[1] > width:
        groups = groups.gather(1, maxima.topk(width, dim=1).indices)  # [b, width]
    offsets = torch.arange(GROUP_ROWS)
    return (groups[:, :, None] * GROUP_ROWS + offsets).reshape(b, -1)  # [b, width * GROUP_ROWS]
