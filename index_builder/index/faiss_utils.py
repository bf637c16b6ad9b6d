"""FAISS index construction and query-time settings (inner-product metric throughout).

Factory strings are FAISS's own (`Flat`, `IVF{n},Flat`, `IVF{n},PQ{m}`, `HNSW32`, ...). Indices that do not carry
ids themselves are wrapped in `IDMap2`, so every index stores block ids and supports `add`; IVF indices also
support `remove`.
"""

import contextlib
import logging
import threading

import faiss
import numpy as np
from tqdm.auto import tqdm

from index_builder.index.exact import PRECISIONS

logger = logging.getLogger(__name__)

SEARCH_PARAMS = ("nprobe", "efSearch", "ht", "k_factor")
# Not a FAISS knob: retrieve rerank * k candidates and re-score them with the exact stored embeddings.
RERANK = "rerank"
# IVF4096,PQ32 over 13.35M blocks: recall@5 0.93 with 10 * k candidates at any nprobe (PQ error, not probing), 0.98
# with 25 * k for the same 1.2 ms (benchmarks/README.md, section 1). At 1M blocks 10 * k already reached 0.98.
DEFAULT_RERANK = 25
# Not a FAISS knob: the precision a Flat index scores in ("float32" or "bfloat16", exact.PRECISIONS); bfloat16
# scores are re-scored in float32 (exact.gemm_top_k).
PRECISION = "precision"
ADD_CHUNK = 65536
# Below this many queries a FAISS search runs on one OpenMP thread: starting a parallel region costs 8-16 ms on a
# 2-vCPU machine where faiss and torch each load their own libgomp (benchmarks/README.md), more than the search.
SMALL_BATCH = 16
_THREADS_LOCK = threading.Lock()


def full_factory(factory: str) -> str:
    """The factory string actually built: IVF indices keep their own ids, others get an IDMap2 wrapper."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a FAISS factory string such as 'Flat', 'IVF1024,PQ32' or 'HNSW32', "
                         f"got {factory!r}.")
    factory = factory.strip()
    if factory.startswith(("IVF", "IDMap")):
        return factory
    return "IDMap2," + factory


def new_index(dimension: int, factory: str):
    try:
        index = faiss.index_factory(dimension, full_factory(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"FAISS cannot build factory {factory!r} for {dimension}-d vectors: "
                         f"{str(error).splitlines()[-1]}") from error
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf) if ivf is not None else None
    if inner is not None and hasattr(inner, "do_polysemous_training"):
        # Polysemous codes only serve Hamming filtering (the `ht` knob) and quadruple PQ training time.
        inner.do_polysemous_training = False
    return index


def check_build_settings(factory: str, search_params: dict, dimension: int) -> None:
    """Raise ValueError now, before any encoding, if `factory` cannot index `dimension`-d vectors or a search
    parameter does not apply to it (an empty index of that factory is built and discarded)."""
    set_search_params(new_index(dimension, factory), dict(search_params))


def train_if_needed(index, sample: np.ndarray):
    """Train IVF/PQ quantizers on `sample` `[n, d]` float32 (no-op for Flat/HNSW)."""
    if index.is_trained:
        return
    nlist = getattr(faiss.try_extract_index_ivf(index), "nlist", 0) if _has_ivf(index) else 0
    if nlist and sample.shape[0] < nlist:
        raise ValueError(f"An IVF index with {nlist} lists needs at least {nlist} training vectors, got "
                         f"{sample.shape[0]}; use fewer lists (e.g. IVF{max(1, sample.shape[0] // 39)}) or 'Flat'.")
    logger.info("Training the FAISS quantizer on %d vectors", sample.shape[0])
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def add_in_chunks(index, vectors, ids: np.ndarray, progress: bool = True):
    """Add `vectors` (anything sliceable to `[n, d]` float32) with int64 `ids` in chunks, with a progress bar."""
    total = len(ids)
    bar = tqdm(total=total, desc="Adding blocks to the FAISS index", unit="block", disable=not progress or total < 2)
    for start in range(0, total, ADD_CHUNK):
        stop = min(start + ADD_CHUNK, total)
        chunk = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
        index.add_with_ids(chunk, np.ascontiguousarray(ids[start:stop], dtype=np.int64))
        bar.update(stop - start)
    bar.close()


def set_search_params(index, params: dict):
    """Apply query-time knobs such as `nprobe` (IVF) or `efSearch` (HNSW); unknown names are rejected."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == PRECISION:
            check_precision(index, value)
            continue
        if name == RERANK:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"rerank must be a non-negative integer (0 = off), got {value!r}.")
            continue
        if name not in SEARCH_PARAMS:
            raise ValueError(f"Unknown search parameter {name!r}; supported: {SEARCH_PARAMS + (RERANK, PRECISION)}.")
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError as error:
            raise ValueError(f"Search parameter {name}={value} does not apply to this index "
                             f"({type(index).__name__}); nprobe is for IVF indices, efSearch for HNSW.") from error


def check_precision(index, value) -> None:
    """Refuse a `precision` search parameter that is unknown, or reduced on an index that is not `Flat`."""
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}.")
    if value != "float32" and not is_flat(index):
        raise ValueError(f"precision={value!r} applies to Flat (exact) indices; this one is "
                         f"{type(faiss.downcast_index(getattr(index, 'index', index))).__name__}, whose candidates "
                         "are already re-scored in float32 (the `rerank` parameter).")


def is_flat(index) -> bool:
    """Whether `index` is an exact inner-product index as a `Flat` factory builds it (`IDMap2,Flat`)."""
    if not isinstance(index, faiss.IndexIDMap2):
        return False
    flat = faiss.downcast_index(index.index)
    return isinstance(flat, faiss.IndexFlat) and flat.metric_type == faiss.METRIC_INNER_PRODUCT


def flat_views(index):
    """`(vectors [n, d] float32, ids [n] int64)` viewing an exact inner-product index's memory, or None.

    Only for `IDMap2,Flat` (what a `Flat` factory builds). The views share FAISS's buffers: use them before the
    index changes (an `add` may move them).
    """
    if not is_flat(index) or not index.ntotal:
        return None
    flat = faiss.downcast_index(index.index)
    n, d = int(flat.ntotal), int(flat.d)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    ids = faiss.rev_swig_ptr(index.id_map.data(), n)
    return vectors, ids


def default_search_params(index, factory: str = "") -> dict:
    """Query-time defaults better than FAISS's (nprobe=1, efSearch=16): nprobe=min(nlist, 32), efSearch=128,
    and for product-quantised indices an exact re-scoring of the top DEFAULT_RERANK * k candidates."""
    if _has_ivf(index):
        params = {"nprobe": min(ivf_nlist(index), 32)}
        return {**params, RERANK: DEFAULT_RERANK} if "PQ" in factory else params
    if "HNSW" in type(faiss.downcast_index(getattr(index, "index", index))).__name__:
        return {"efSearch": 128}
    return {}


def ivf_nlist(index) -> int:
    """Number of inverted lists of an IVF index (0 for others)."""
    return faiss.extract_index_ivf(index).nlist if _has_ivf(index) else 0


def _has_ivf(index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


def remove_ids(index, ids: np.ndarray) -> int:
    try:
        return index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
    except RuntimeError as error:
        raise ValueError(f"This FAISS index ({type(faiss.downcast_index(index)).__name__}) cannot remove vectors "
                         "(HNSW graphs cannot); rebuild the index without those blocks, or use a Flat or IVF index.") \
            from error


def write(index, path):
    faiss.write_index(index, str(path))


def read(path):
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        raise ValueError(f"{path} is not a readable FAISS index ({str(error).splitlines()[-1]}); the file is "
                         "corrupted. Rebuild or re-download the index.") from error


@contextlib.contextmanager
def threads_for(batch_size: int):
    """Run FAISS single-threaded for small batches (see SMALL_BATCH); larger batches keep every thread."""
    if batch_size >= SMALL_BATCH:
        yield
        return
    with _THREADS_LOCK:  # the thread count is process-global: restore it before another search changes it
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(threads)
