"""How far a reduced-precision encoding is from float32, measured on a sample and recorded in the manifest.

When `build_index` encodes in a reduced precision, it also encodes a fixed sample of the blocks in float32 and
compares them (the manifest's `encoding` record, shown on the index's dataset card):

- `sample_blocks`: n, the blocks of the sample: every block when there are at most `SAMPLE_SIZE`, else
  `SAMPLE_SIZE` rows drawn without replacement by a generator seeded with 0 (the same rows for the same number of
  blocks).
- `cosine_mean`, `cosine_min`: the cosine between each sample block's reduced and float32 embeddings.
- `top5_agreement`: retrieval over the sample. Each sample block's float32 embedding is a query; its top 5 among
  the other n - 1 blocks (itself left out) are ranked by inner product once against their float32 embeddings and
  once against their reduced ones; the agreement is the mean over the n queries of |top5_float32 & top5_reduced| / 5.
  1.0 means the reduced index returns the same five blocks (in any order) for every query; it is null when the
  sample has fewer than 6 blocks.
"""

import logging

import numpy as np

from index_builder.encoding.encode import embed_in_memory
from index_builder.encoding.precision import Precision

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 512
TOP_K = 5
WARN_BELOW = 0.99  # top-5 agreement under which the build warns


def sample_rows(num_blocks: int, size: int = SAMPLE_SIZE) -> np.ndarray:
    """The sorted rows of the sample: all of them, or `size` drawn with seed 0."""
    if num_blocks <= size:
        return np.arange(num_blocks)
    return np.sort(np.random.default_rng(0).choice(num_blocks, size=size, replace=False))


def agreement(reference: np.ndarray, reduced: np.ndarray, k: int = TOP_K) -> dict:
    """Cosines and top-k agreement (module docstring) of `reduced` `[n, d]` against `reference` `[n, d]`, n >= 1."""
    reference, reduced = np.asarray(reference, np.float64), np.asarray(reduced, np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(reduced, axis=1)
    # [n]
    cosine = np.clip((reference * reduced).sum(axis=1) / np.maximum(norms, 1e-30), -1.0, 1.0)
    n = len(reference)
    top = round(_top_k_overlap(reference, reduced, k), 6) if n > k else None
    return {"sample_blocks": n, "cosine_mean": round(float(cosine.mean()), 6),
            "cosine_min": round(float(cosine.min()), 6), "top5_agreement": top}


def _top_k_overlap(reference: np.ndarray, reduced: np.ndarray, k: int) -> float:
    # [n, n]: float32 queries against float32 and against reduced blocks, each query's own block left out
    exact, approx = reference @ reference.T, reference @ reduced.T
    np.fill_diagonal(exact, -np.inf)
    np.fill_diagonal(approx, -np.inf)
    # [n, k]
    top_exact = np.argpartition(-exact, k - 1, axis=1)[:, :k]
    top_approx = np.argpartition(-approx, k - 1, axis=1)[:, :k]
    shared = [len(np.intersect1d(a, b)) for a, b in zip(top_exact, top_approx, strict=True)]
    return float(np.mean(shared)) / k


def encoding_record(blocks, model, tokenizer, embeddings, precision: Precision, batch_size: int, max_length: int,
                    sample_size: int = SAMPLE_SIZE) -> dict:
    """The manifest's `encoding` record of embeddings computed in `precision`: its dtype, and (with a sample of at
    least one block) their agreement with float32 embeddings of the same sample, logged too."""
    record = {"dtype": precision.compute_dtype, "autocast": precision.autocast}
    rows = sample_rows(len(blocks), sample_size)
    if len(rows):
        # [n, d] each
        reference = embed_in_memory(blocks.select(rows), model, tokenizer, batch_size, max_length)
        reduced = embeddings.take(rows)
        record.update(agreement(reference, reduced))
    else:
        record.update(sample_blocks=0, cosine_mean=None, cosine_min=None, top5_agreement=None)
    _log(record)
    return record


def _log(record: dict) -> None:
    if not record["sample_blocks"]:
        logger.info("Encoded in %s; agreement with float32 not measured (no sample)", record["dtype"])
        return
    logger.info("Encoded in %s: cosine to float32 mean %.6f (min %.6f), top-5 agreement %s over %d sample blocks",
                record["dtype"], record["cosine_mean"], record["cosine_min"], record["top5_agreement"],
                record["sample_blocks"])
    if record["top5_agreement"] is not None and record["top5_agreement"] < WARN_BELOW:
        logger.warning("The %s embeddings agree with float32 on only %.1f%% of the top-5 blocks of the sample; "
                       "build in float32 where retrieval must not change.", record["dtype"],
                       100 * record["top5_agreement"])
