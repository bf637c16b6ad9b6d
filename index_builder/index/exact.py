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


def gemm_top_k(queries: np.ndarray, vectors: np.ndarray, k: int):
    """Exact top-k rows of the in-memory float32 matrix `vectors` `[n, d]` for `queries` `[b, d]`, best first.

    One torch matrix product per chunk of rows, then a top-k over the chunk: about 3x FAISS's own Flat search for
    batches of queries on CPU (its BLAS blocks are small and each result goes through a heap). Returns scores
    `[b, k]` float32 and row numbers `[b, k]` int64; equal scores are ordered by row as in `exact_top_k`.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))  # [b, d]
    matrix = torch.from_numpy(vectors)  # [n, d], shared with FAISS, never written
    chunk = max(1024, GEMM_SCORES_PER_CHUNK // max(1, len(q)))
    kept_scores, kept_rows = [], []
    with torch.no_grad():
        for start in range(0, len(matrix), chunk):
            scores = matrix[start:start + chunk] @ q.T  # [c, b]
            top_scores, top_rows = scores.topk(min(k, len(scores)), dim=0)  # [k, b]
            kept_scores.append(top_scores)
            kept_rows.append(top_rows + start)
    # [b, chunks * k] candidates; the final order (score, then row) is exact_top_k's
    scores = torch.cat(kept_scores).T.numpy()
    rows = torch.cat(kept_rows).T.numpy()
    return _keep_top(scores, rows, k)
