"""`BlockIndex`: the blocks of a corpus (memory-mapped Arrow) plus a FAISS index of their embeddings.

On disk a BlockIndex is a directory holding `blocks.arrow`, `index.faiss` and `manifest.json` (ARCHITECTURE.md,
floor plan). It is written to a temporary directory and renamed into place, and checked against its manifest when
loaded.
"""

import logging
import threading
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import index_builder.index.faiss_utils as faiss_utils
from index_builder.index.blocks_table import (
    TEXT_COLUMNS,
    batches_of,
    blocks_digest,
    embeddings_of,
    open_blocks,
    record_batch,
    write_blocks,
)
from index_builder.index.exact import exact_top_k, gemm_top_k, low_precision_copy
from index_builder.index.file_rows import FileRows
from index_builder.index.fingerprint import block_embedder_of, has_block_embedder, weights_fingerprint
from index_builder.index.fusion import (
    DEFAULT_FUSION,
    DEFAULT_WEIGHT,
    check_fusion,
    check_query_texts,
    fuse,
    hybrid_depth,
    resolve_mode,
)
from index_builder.index.lexical import LEXICAL_DIR, LEXICAL_FILES, LexicalIndex, LexicalSettings
from index_builder.index.manifest import BLOCKS_FILE, FAISS_FILE, MANIFEST, IndexMismatchError, Manifest, file_entries
from index_builder.index.rw_lock import ReadWriteLock
from tokenization.storage import atomic_directory, recover_directory

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_SIZE = 100_000
LEXICAL_BATCH = 8192  # blocks tokenized at a time when building a lexical part


class BlockIndex:
    """Searchable blocks: `search(query_embeddings, k) -> (scores, block_ids)` and `get_blocks(block_ids)`.

    Build with `from_arrays` (in memory), `build` (streamed to a directory), `from_realm_checkpoint` (google's
    open-QA checkpoints) or `realm-build-index`; reload with `load_from_disk` or `from_pretrained`. With a lexical part
    (`add_lexical`: BM25 over the blocks' texts) it also searches by text, alone or fused with the dense scores.
    """

    def __init__(self, blocks: datasets.Dataset, faiss_index, manifest: Manifest, directory: Path | None = None,
                 lexical: LexicalIndex | None = None):
        self.blocks = blocks
        self.faiss_index = faiss_index
        self.manifest = manifest
        self.directory = directory
        self.lexical = lexical
        self._texts = blocks.select_columns(TEXT_COLUMNS)
        self._sorted_ids = None
        self._file_rows = _file_rows(blocks, directory)
        self._lock = ReadWriteLock()  # searches and reads together, add/remove/search-parameter changes alone
        self._low_vectors = None  # a Flat index's vectors in bfloat16, made on the first search that needs them
        self._low_vectors_lock = threading.Lock()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_arrays(cls, embeddings, texts, titles=None, doc_ids=None, factory: str = "Flat", embedder=None,
                    embedder_name: str | None = None, train_size: int = DEFAULT_TRAIN_SIZE,
                    search_params: dict | None = None, progress: bool = True, lexical=None) -> "BlockIndex":
        """An in-memory index of `embeddings` `[n, d]` and their `texts` (block ids 0..n-1).

        Args:
            titles, doc_ids: per-block strings (default "" and the block id).
            factory: FAISS factory string: "Flat" (exact), "IVF{n},Flat", "IVF{n},PQ{m}", "HNSW32", ...
            embedder: the model (or block embedder) that produced the embeddings, recorded by name and weight
                fingerprint so that a later query with other weights can be detected.
            search_params: query-time knobs kept with the index, e.g. {"nprobe": 16}, {"efSearch": 128} or
                {"rerank": 25} (re-score 25 * k candidates with the exact stored embeddings). Defaults:
                nprobe=min(nlist, 32) for IVF, efSearch=128 for HNSW, rerank=25 for PQ.
            lexical: also index the blocks' titles and texts for lexical (BM25) and hybrid search: "bm25" or a
                `LexicalSettings` (see `add_lexical`); None (default) for a dense index only.
        """
        embeddings = _as_matrix(embeddings, "embeddings")
        n = embeddings.shape[0]
        _require_rows(n)
        titles, doc_ids = _column(titles, n, "", "titles"), _column(doc_ids, n, None, "doc_ids")
        texts = _column(texts, n, None, "texts", required=True)
        block_ids = np.arange(n, dtype=np.int64)
        doc_ids = [str(i) for i in block_ids] if doc_ids is None else [str(d) for d in doc_ids]
        table = pa.Table.from_batches([record_batch(block_ids, doc_ids, titles, texts, embeddings)])
        index = _build_faiss(factory, embeddings, block_ids, train_size, progress)
        manifest = _new_manifest(index, factory, embedder, embedder_name, search_params)
        faiss_utils.set_search_params(index, manifest.search_params)
        built = cls(datasets.Dataset(table), index, manifest)
        settings = _lexical_settings(lexical)
        return built if settings is None else built.add_lexical(settings, progress=progress)

    @classmethod
    def build(cls, blocks: datasets.Dataset, embeddings, directory, factory: str = "Flat", embedder=None,
              embedder_name: str | None = None, train_size: int = DEFAULT_TRAIN_SIZE,
              search_params: dict | None = None, overwrite: bool = False, progress: bool = True,
              lexical=None, encoding: dict | None = None) -> "BlockIndex":
        """Stream `blocks` (block_id, doc_id, title, text) and their `embeddings` `[n, d]` into `directory`.

        Nothing is held in RAM beyond one batch and the FAISS index itself (and, with `lexical`, the term counts of
        the lexical part while it is built); the directory appears only complete. `lexical`: as in `from_arrays`.
        `encoding`: the manifest's record of a reduced-precision encoding (`encoding/agreement.py`), or None.
        """
        settings = _lexical_settings(lexical)
        if len(blocks) != len(embeddings):
            raise ValueError(f"{len(blocks)} blocks but {len(embeddings)} embeddings; they must match row for row.")
        _require_rows(len(blocks))
        dimension = embeddings.shape[1]
        with atomic_directory(directory, overwrite=_may_replace(directory, overwrite)) as staging:
            write_blocks(staging / BLOCKS_FILE, dimension, _block_batches(blocks, embeddings))
            written = open_blocks(staging / BLOCKS_FILE)
            block_ids = np.asarray(written.data.column("block_id").to_numpy(), dtype=np.int64)
            index = _build_faiss(factory, embeddings_of(written), block_ids, train_size, progress)
            manifest = _new_manifest(index, factory, embedder, embedder_name, search_params)
            manifest.contiguous_ids = bool(np.array_equal(block_ids, np.arange(len(block_ids))))
            manifest.encoding = encoding
            if settings is not None:
                manifest.lexical = write_lexical_part(written, settings, staging / LEXICAL_DIR, progress)
                manifest.blocks_digest = manifest.lexical["blocks_digest"]
            _write_index_files(staging, index, manifest)
        return cls.load_from_disk(directory, verify=False)

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def factory(self) -> str:
        return self.manifest.factory

    def __repr__(self) -> str:
        return (f"BlockIndex(blocks={len(self)}, dimension={self.dimension}, factory={self.factory!r}, "
                f"embedder={self.manifest.embedder_name!r}, directory={self.directory})")

    # ----------------------------------------------------------------- search
    def reading(self):
        """Hold the index still across several calls (`with index.reading(): search, get_blocks, ...`): `add`,
        `remove` and `set_search_params` from other threads wait until the block ends. Every method already holds
        it for itself."""
        return self._lock.reading()

    @property
    def has_lexical(self) -> bool:
        """Whether the index has a lexical part (BM25), so that it can search by text."""
        return self.lexical is not None

    def search(self, query_embeddings=None, k: int | None = None, *, query_texts=None, mode: str | None = None,
               fusion: str = DEFAULT_FUSION, weight: float = DEFAULT_WEIGHT, depth: int | None = None, **search_params):
        """Top-`k` blocks for each query, by embedding (dense), by text (lexical) or both (hybrid).

        Args:
            query_embeddings: `[batch, dimension]` float32 numpy array or torch tensor (detached for you).
            k: blocks per query, 1 <= k <= len(index).
            query_texts: the queries' texts `[batch]`, for the lexical side.
            mode: "dense", "lexical" or "hybrid"; None: hybrid when the index has a lexical part and both embeddings
                and texts are given, lexical with texts alone, dense otherwise.
            fusion, weight, depth: hybrid only; how the sides are fused ("interpolation" or "rrf", with `weight` the
                dense side's share in [0, 1]) and how many candidates each side gives (default max(k, 20)); see
                index_builder/index/fusion.py.
            **search_params: FAISS knobs for this call only, e.g. nprobe=32, or the index's own `rerank` and
                `precision` (such a call runs alone, as an edit does; set them once with `set_search_params` when
                several threads search).
        Returns:
            scores `[batch, k]` float32 and block_ids `[batch, k]` int64, best first; never FAISS's -1 padding
            (queries an approximate index cannot fill are completed by an exhaustive search). The scores are inner
            products (dense), BM25 scores (lexical) or fused scores (hybrid).
        """
        mode = resolve_mode(mode, self.has_lexical, query_embeddings is not None, query_texts is not None)
        queries = None if mode == "lexical" else self._check_queries(query_embeddings)
        texts = None if mode == "dense" else check_query_texts(query_texts, None if queries is None else len(queries))
        if mode == "hybrid":
            check_fusion(fusion, weight)
        if search_params:
            with self._lock.writing():
                previous = dict(self.manifest.search_params)
                faiss_utils.set_search_params(self.faiss_index, search_params)
                try:
                    return self._search_mode(mode, queries, texts, self._check_k(k), fusion, weight, depth,
                                             search_params)
                finally:
                    faiss_utils.set_search_params(self.faiss_index, previous or _reset_params(search_params))
        with self._lock.reading():
            return self._search_mode(mode, queries, texts, self._check_k(k), fusion, weight, depth)

    def _search_mode(self, mode, queries, texts, k, fusion, weight, depth, overrides=None):
        if mode == "dense":
            return self._search(queries, k, overrides=overrides)
        if mode == "lexical":
            scores, rows = self.lexical.search(texts, k)
            return scores, self._ids_of_rows(rows)
        width = hybrid_depth(k, depth, len(self))
        dense_scores, dense_ids = self._search(queries, width, rerank_for=k, overrides=overrides)
        found = self.lexical.candidates(texts, width)
        return fuse(dense_scores, dense_ids, [scores for scores, _ in found],
                    [self._ids_of_rows(rows) for _, rows in found], k, fusion, weight)

    def _search(self, queries: np.ndarray, k: int, rerank_for: int | None = None, overrides: dict | None = None):
        """Dense top-k; with a `rerank` search parameter, k * rerank candidates are re-scored exactly, or
        `rerank_for` * rerank when given (a hybrid search takes a deeper list for the cost of a top-`rerank_for`).
        A Flat index with `precision="bfloat16"` scores batches of SMALL_BATCH or more queries in bfloat16 and
        re-scores its best candidates in float32 (one query's search is bound by memory, not by arithmetic, and
        bfloat16 matrix-vector products are slower than FAISS's float32 scan on CPU: it stays float32)."""
        params = {**self.manifest.search_params, **(overrides or {})}
        flat = faiss_utils.flat_views(self.faiss_index) if len(queries) >= faiss_utils.SMALL_BATCH else None
        if flat is not None:  # exact index, batch of queries: torch's matrix products beat FAISS's scan 3-8x
            vectors, ids = flat
            reduced = params.get(faiss_utils.PRECISION, "float32") != "float32"
            scores, rows = gemm_top_k(queries, vectors, k, self._bfloat16_vectors(vectors) if reduced else None)
            return scores, ids[rows]
        rerank = params.get(faiss_utils.RERANK, 0)
        candidates = min(len(self), max(k, (rerank_for or k) * rerank)) if rerank > 1 else k
        with faiss_utils.threads_for(len(queries)):
            scores, ids = self.faiss_index.search(queries, candidates)
        incomplete = (ids < 0).any(axis=1)
        if incomplete.any():
            logger.info("%d queries had fewer than %d results from the approximate index; searching exhaustively",
                        int(incomplete.sum()), candidates)
            scores[incomplete], ids[incomplete] = self.exact_search(queries[incomplete], candidates)
        if candidates > k:
            scores, ids = self._rescore(queries, ids, k)
        return scores, ids

    def _bfloat16_vectors(self, vectors: np.ndarray):
        """The Flat index's `vectors` `[n, d]` in bfloat16 (half their memory again), made once; edits drop it."""
        with self._low_vectors_lock:
            if self._low_vectors is None or len(self._low_vectors) != len(vectors):
                logger.info("Copying %d vectors to bfloat16 for reduced-precision search", len(vectors))
                self._low_vectors = low_precision_copy(vectors)
            return self._low_vectors

    def _rescore(self, queries: np.ndarray, ids: np.ndarray, k: int):
        """Exact scores of the candidate ids `[b, c]` from the stored embeddings; keep the best k."""
        # [b, c]
        exact = np.einsum("bd,bcd->bc", queries, self.get_embeddings(ids))
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, axis=1).astype(np.float32), np.take_along_axis(ids, order, axis=1)

    def exact_search(self, query_embeddings, k: int):
        """Exact top-k by brute force over the stored float32 embeddings (slow at scale; the index's ground truth)."""
        queries = self._check_queries(query_embeddings)
        with self._lock.reading():
            k = self._check_k(k)
            return exact_top_k(queries, embeddings_of(self.blocks), k, row_ids=self._block_id_column())

    def set_search_params(self, **search_params):
        """Set query-time knobs (nprobe, efSearch) for every later search; saved with the index."""
        with self._lock.writing():
            faiss_utils.set_search_params(self.faiss_index, search_params)
            self.manifest.search_params.update(search_params)

    # ----------------------------------------------------------------- lexical part
    def add_lexical(self, settings: LexicalSettings | None = None, save: bool = False, progress: bool = True,
                    **setting_values) -> "BlockIndex":
        """Give the index a lexical part: BM25 over every block's title and text (replacing any it had), without
        re-encoding anything. Returns the index.

        Args:
            settings: a `LexicalSettings`, or its fields as keyword arguments (k1, b, stopwords, stemmer, lowercase).
            save: also write the lexical part into the index's directory at once (the blocks and FAISS files are
                left as they are; the manifest is rewritten last); otherwise `save_to_disk` writes it.
        """
        settings = settings if settings is not None else LexicalSettings(**setting_values)
        with self._lock.writing():
            if save:
                self._save_lexical(settings, progress)
            else:
                self._set_lexical(lexical_part(self.blocks, settings, progress))
        return self

    def _set_lexical(self, lexical: LexicalIndex | None):
        self.lexical = lexical
        self.manifest.lexical = None if lexical is None else lexical.record()
        self.manifest.blocks_digest = None if lexical is None else lexical.blocks_digest

    def _save_lexical(self, settings: LexicalSettings, progress: bool):
        """Write a lexical part straight into `self.directory` (in place of any earlier one), then the manifest."""
        if self.directory is None:
            raise ValueError("save=True writes into the index's directory, and this index has none yet: call "
                             "save_to_disk(directory) instead.")
        directory = Path(self.directory)
        with atomic_directory(directory / LEXICAL_DIR, overwrite=True) as staging:
            record = write_lexical_part(self.blocks, settings, staging, progress)
        self.manifest.lexical, self.manifest.blocks_digest = record, record["blocks_digest"]
        self.manifest.files.update(file_entries(directory, LEXICAL_FILES))  # blocks.arrow is not hashed again
        self.manifest.write(directory)
        self.lexical = LexicalIndex.load(directory, record)

    # ----------------------------------------------------------------- blocks
    def get_blocks(self, block_ids):
        """The blocks with these ids: a list of dicts (block_id, doc_id, title, text), nested like `block_ids`."""
        ids = np.asarray(block_ids, dtype=np.int64)
        with self._lock.reading():
            rows = self._rows_of(ids.reshape(-1))
            if self._file_rows is not None:
                flat = self._file_rows.blocks(rows)
            else:
                columns = self._texts[rows.tolist()]
                flat = [dict(zip(TEXT_COLUMNS, values)) for values in zip(*(columns[c] for c in TEXT_COLUMNS))]
        if ids.ndim <= 1:
            return flat
        width = ids.shape[-1]
        return [flat[i:i + width] for i in range(0, len(flat), width)]

    def get_embeddings(self, block_ids) -> np.ndarray:
        """Stored float32 embeddings of the given block ids, shape `[*block_ids.shape, dimension]`."""
        ids = np.asarray(block_ids, dtype=np.int64)
        with self._lock.reading():
            rows = self._rows_of(ids.reshape(-1))
            found = self._file_rows.embeddings(rows) if self._file_rows is not None else \
                embeddings_of(self.blocks)[rows]
        return found.reshape(*ids.shape, self.dimension)

    def add(self, embeddings, texts, titles=None, doc_ids=None) -> np.ndarray:
        """Append blocks; returns their new block ids (after the largest existing id). Waits for the searches and
        reads under way in other threads, which wait for it in turn."""
        with self._lock.writing():
            return self._add(embeddings, texts, titles, doc_ids)

    def _add(self, embeddings, texts, titles, doc_ids) -> np.ndarray:
        embeddings = _as_matrix(embeddings, "embeddings", self.dimension)
        n = embeddings.shape[0]
        texts, titles = _column(texts, n, None, "texts", required=True), _column(titles, n, "", "titles")
        start = int(self._block_id_column().max()) + 1 if len(self) else 0
        block_ids = np.arange(start, start + n, dtype=np.int64)
        doc_ids = [str(i) for i in block_ids] if doc_ids is None else [str(d) for d in _column(doc_ids, n, None,
                                                                                                 "doc_ids")]
        faiss_utils.add_in_chunks(self.faiss_index, embeddings, block_ids, progress=False)
        new_rows = datasets.Dataset(pa.Table.from_batches([record_batch(block_ids, doc_ids, titles, texts,
                                                                        embeddings)]))
        self._replace_blocks(datasets.concatenate_datasets([self.blocks, new_rows]))
        self.manifest.num_blocks = len(self)
        self._rebuild_lexical()
        return block_ids

    def remove(self, block_ids) -> int:
        """Remove blocks by id (IVF and Flat indices; HNSW graphs cannot). Returns how many were removed. Waits for
        the searches and reads under way in other threads, which wait for it in turn."""
        with self._lock.writing():
            return self._remove(block_ids)

    def _remove(self, block_ids) -> int:
        ids = np.unique(np.asarray(block_ids, dtype=np.int64))
        self._rows_of(ids)  # every id must exist
        removed = faiss_utils.remove_ids(self.faiss_index, ids)
        keep = ~np.isin(self._block_id_column(), ids)
        self._replace_blocks(self.blocks.select(np.flatnonzero(keep)).flatten_indices(keep_in_memory=True))
        self.manifest.num_blocks = len(self)
        self.manifest.contiguous_ids = False
        self._rebuild_lexical()
        return int(removed)

    def _rebuild_lexical(self):
        """BM25 weights depend on every block (document frequencies, average length): an edit rebuilds them."""
        if self.lexical is not None:
            logger.info("Rebuilding the lexical part over the %d blocks after the edit", len(self.blocks))
            self._set_lexical(lexical_part(self.blocks, self.lexical.settings, progress=False))

    # ----------------------------------------------------------------- persistence
    def save_to_disk(self, directory, overwrite: bool = True) -> Path:
        """Write the index to `directory` (a temporary directory renamed into place).

        An existing BlockIndex at `directory` is replaced only once the new one is complete; any other existing,
        non-empty directory is refused.
        """
        directory = Path(directory)
        with self._lock.reading(), atomic_directory(directory, overwrite=_may_replace(directory, overwrite)) as staging:
            write_blocks(staging / BLOCKS_FILE, self.dimension, batches_of(self.blocks))
            if self.lexical is not None:
                self.lexical.save(staging / LEXICAL_DIR)
            _write_index_files(staging, self.faiss_index, self.manifest)
        self.directory = directory
        if self.lexical is not None:  # serve the saved copy, memory-mapped
            self.lexical = LexicalIndex.load(directory, self.manifest.lexical)
        return directory

    @classmethod
    def load_from_disk(cls, directory, verify: bool = True, trusted_root=None) -> "BlockIndex":
        """Load a saved index (memory-mapped blocks), checking it against its manifest.

        Args:
            verify: also compare file checksums with the manifest (reads every byte once); sizes, row counts and
                dimensions are always checked.
            trusted_root: where the index's files may lead (default `directory` itself; a Hub snapshot's files link
                into its repo's cache folder).
        Raises:
            FileNotFoundError if `directory` is not an index; IndexMismatchError (a ValueError) naming what differs.
        """
        directory = Path(directory)
        recover_directory(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"No BlockIndex directory at {directory}.")
        manifest = Manifest.read(directory)
        if manifest.layout is not None:
            raise IndexMismatchError(f"{directory} holds an index in the Hub layout (parquet shards); load it with "
                                     "BlockIndex.from_pretrained, which converts it.")
        manifest.verify_files(directory, checksums=verify, trusted_root=trusted_root)
        blocks = open_blocks(directory / BLOCKS_FILE)
        index = faiss_utils.read(directory / FAISS_FILE)
        _check_consistency(directory, manifest, blocks, index)
        lexical = None
        if manifest.lexical is not None:
            lexical = LexicalIndex.load(directory, manifest.lexical, trusted_root)
            if verify and blocks_digest(blocks) != manifest.blocks_digest:
                raise IndexMismatchError(f"The lexical part of {directory} was built over other blocks than "
                                         f"{BLOCKS_FILE} holds; rebuild it (add_lexical) or re-download the index.")
        faiss_utils.set_search_params(index, manifest.search_params)
        return cls(blocks, index, manifest, directory, lexical)

    # ----------------------------------------------------------------- compatibility
    def check_compatible(self, model, warn: bool = True) -> bool:
        """Check that `model` can query this index: the dimension must match (else IndexMismatchError); a block
        embedder whose weights differ from the ones that built the index gives a warning. Returns True if the
        fingerprints match (or none was recorded)."""
        dimension = getattr(getattr(model, "config", None), "retriever_proj_size", None)
        if dimension is not None and dimension != self.dimension:
            raise IndexMismatchError(
                f"The index holds {self.dimension}-d embeddings but {type(model).__name__} produces {dimension}-d "
                f"queries (config.retriever_proj_size); rebuild the index with this model's block embedder.")
        if self.manifest.embedder_fingerprint is None or not has_block_embedder(model):
            return True
        same = weights_fingerprint(block_embedder_of(model)) == self.manifest.embedder_fingerprint
        if not same and warn:
            warnings.warn(f"This index was built with block embedder {self.manifest.embedder_name!r} whose weights "
                          f"differ from {type(model).__name__}'s block tower: retrieval uses stale embeddings "
                          "(expected during REALM pretraining between refreshes; otherwise rebuild the index).",
                          stacklevel=2)
        return same

    # ----------------------------------------------------------------- internals
    def _check_queries(self, query_embeddings) -> np.ndarray:
        if hasattr(query_embeddings, "detach"):
            query_embeddings = query_embeddings.detach().float().cpu().numpy()
        queries = np.asarray(query_embeddings)
        if queries.ndim != 2:
            raise ValueError(f"query_embeddings must have shape [batch, {self.dimension}], got {queries.shape}; "
                             "for a single query pass q[None].")
        if queries.shape[1] != self.dimension:
            raise IndexMismatchError(f"Queries have {queries.shape[1]} dimensions but the index holds "
                                     f"{self.dimension}-d embeddings (built with {self.manifest.embedder_name!r}); "
                                     "query with the embedder the index was built for, or rebuild the index with "
                                     "your model's block embedder.")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        bad = ~np.isfinite(queries).all(axis=1)
        if bad.any():
            raise ValueError(f"query_embeddings contain NaN or inf in rows {np.flatnonzero(bad)[:10].tolist()}; "
                             "check the model's inputs and dtype.")
        return queries

    def _check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if k > len(self):
            raise ValueError(f"k={k} exceeds the {len(self)} blocks in the index; ask for at most {len(self)}.")
        return int(k)

    def _block_id_column(self) -> np.ndarray:
        if self._sorted_ids is None:
            self._sorted_ids = np.asarray(self.blocks.data.column("block_id").to_numpy(), dtype=np.int64)
        return self._sorted_ids

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Block ids of row numbers `[...]`."""
        return rows if self.manifest.contiguous_ids else self._block_id_column()[rows]

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of block ids (block ids are kept in increasing order)."""
        if self.manifest.contiguous_ids:
            rows = ids
            valid = (ids >= 0) & (ids < len(self.blocks))
        else:
            column = self._block_id_column()
            rows = np.clip(np.searchsorted(column, ids), 0, max(len(column) - 1, 0))
            valid = column[rows] == ids if len(column) else np.zeros_like(ids, dtype=bool)
        if not valid.all():
            raise KeyError(f"Block ids not in the index: {ids[~valid][:10].tolist()}")
        return rows

    def _replace_blocks(self, blocks: datasets.Dataset):
        self.blocks = blocks
        self._texts = blocks.select_columns(TEXT_COLUMNS)
        self._sorted_ids = None
        self._file_rows = None  # edited rows live in memory: read through the table
        self._low_vectors = None  # the Flat vectors changed

    # Hub and checkpoint conversion live in their own modules.
    def push_to_hub(self, repo_id: str, **kwargs):
        from index_builder.hub.repo import push_index_to_hub

        return push_index_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, repo_id_or_path, **kwargs) -> "BlockIndex":
        from index_builder.hub.repo import load_index

        return load_index(cls, repo_id_or_path, **kwargs)

    @classmethod
    def from_realm_checkpoint(cls, path_or_repo, allow_pickle: bool = False, **kwargs) -> "BlockIndex":
        from index_builder.google_checkpoint import index_from_realm_checkpoint

        return index_from_realm_checkpoint(cls, path_or_repo, allow_pickle=allow_pickle, **kwargs)


def lexical_part(blocks: datasets.Dataset, settings: LexicalSettings, progress: bool) -> LexicalIndex:
    """BM25 over the title and text of every row of `blocks`, tagged with their digest (held in a temporary
    folder until saved)."""
    return LexicalIndex.build(_lexical_texts(blocks), len(blocks), settings, blocks_digest(blocks), progress=progress)


def write_lexical_part(blocks: datasets.Dataset, settings: LexicalSettings, folder: Path, progress: bool) -> dict:
    """Write the lexical part of `blocks` into `folder` (an index's `bm25/` being staged); its manifest entry."""
    return LexicalIndex.write(_lexical_texts(blocks), len(blocks), settings, blocks_digest(blocks), folder,
                              progress=progress)


def _lexical_texts(blocks: datasets.Dataset):
    return (_joined(batch) for batch in
            blocks.select_columns(["title", "text"]).with_format("arrow").iter(batch_size=LEXICAL_BATCH))


def _joined(batch: pa.Table) -> pa.Array:
    """What the lexical part indexes of each block: its title and its text, `[rows]` strings."""
    title, text = (pc.fill_null(batch.column(name).combine_chunks(), "") for name in ("title", "text"))
    return pc.binary_join_element_wise(title, text, " ")


def _lexical_settings(lexical) -> LexicalSettings | None:
    """`lexical` of the constructors: None, "bm25" (default settings), a LexicalSettings or a dict of its fields."""
    if lexical is None or isinstance(lexical, LexicalSettings):
        return lexical
    if lexical == "bm25":
        return LexicalSettings()
    if isinstance(lexical, dict):
        return LexicalSettings(**lexical)
    raise ValueError(f"lexical must be None, 'bm25', a LexicalSettings or a dict of its fields, got {lexical!r}.")


def _file_rows(blocks: datasets.Dataset, directory: Path | None) -> FileRows | None:
    """Row reads by `pread` when `blocks` is the memory-mapped blocks file of `directory` (see file_rows.py)."""
    if directory is None:
        return None
    path = Path(directory) / BLOCKS_FILE
    if not any(Path(f["filename"]) == path for f in blocks.cache_files):
        return None
    return FileRows.of(blocks, path)


def _as_matrix(embeddings, name: str, dimension: int | None = None) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    matrix = np.ascontiguousarray(np.asarray(embeddings), dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape [num_blocks, dimension], got {matrix.shape}.")
    if dimension is not None and matrix.shape[1] != dimension:
        raise IndexMismatchError(f"{name} have {matrix.shape[1]} dimensions but the index holds {dimension}.")
    return _check_finite(matrix, name)


def _check_finite(matrix: np.ndarray, name: str, first_row: int = 0) -> np.ndarray:
    """`matrix` `[rows, dimension]`, or a ValueError naming its NaN/inf rows (numbered from `first_row`)."""
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} contain NaN or inf in rows {(first_row + np.flatnonzero(bad))[:10].tolist()}; an "
                         "index of them would return garbage. Check the embedder's dtype (fp16 overflow) and inputs.")
    return matrix


def _column(values, n: int, default, name: str, required: bool = False):
    if values is None:
        if required:
            raise ValueError(f"{name} are required, one per embedding.")
        return None if default is None else [default] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"Got {len(values)} {name} for {n} embeddings; give one per embedding.")
    if name in ("texts", "titles") and not all(isinstance(v, str) for v in values):
        bad = next(i for i, v in enumerate(values) if not isinstance(v, str))
        raise TypeError(f"{name}[{bad}] is {type(values[bad]).__name__}, expected str.")
    return values


def _build_faiss(factory, embeddings, block_ids, train_size, progress):
    index = faiss_utils.new_index(embeddings.shape[1], factory)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        size = min(len(block_ids), max(train_size, 39 * faiss_utils.ivf_nlist(index)))
        rows = np.sort(rng.choice(len(block_ids), size=size, replace=False))
        faiss_utils.train_if_needed(index, embeddings[rows])
    faiss_utils.add_in_chunks(index, embeddings, block_ids, progress=progress)
    return index


def _new_manifest(index, factory, embedder, embedder_name, search_params) -> Manifest:
    name, fingerprint = embedder_name, None
    if embedder is not None:
        tower = block_embedder_of(embedder)
        fingerprint = weights_fingerprint(tower)
        name = name or getattr(embedder, "name_or_path", None) or type(embedder).__name__
    params = {**faiss_utils.default_search_params(index, factory), **(search_params or {})}
    return Manifest(num_blocks=int(index.ntotal), dimension=index.d, factory=factory, embedder_name=name,
                    embedder_fingerprint=fingerprint, search_params=params)


def _block_batches(blocks: datasets.Dataset, embeddings, size: int = 65536):
    for start in range(0, len(blocks), size):
        rows = blocks[start:start + size]
        # [rows, dimension], checked chunk by chunk (a NaN row fails the build before anything replaces the target)
        chunk = _check_finite(np.asarray(embeddings[start:start + len(rows["block_id"])]), "embeddings", start)
        yield record_batch(rows["block_id"], rows["doc_id"], rows["title"], rows["text"], chunk)


def _write_index_files(directory: Path, index, manifest: Manifest):
    faiss_utils.write(index, directory / FAISS_FILE)
    manifest.num_blocks = int(index.ntotal)
    manifest.record_files(directory, [BLOCKS_FILE, FAISS_FILE] + (LEXICAL_FILES if manifest.lexical else []))
    manifest.write(directory)


def _may_replace(directory, overwrite: bool) -> bool:
    """Only an existing BlockIndex (or an empty directory) may be replaced."""
    directory = Path(directory)
    if not directory.exists():
        return False
    if not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it.")
    if directory.is_dir() and (not any(directory.iterdir()) or (directory / MANIFEST).exists()):
        return True
    raise FileExistsError(f"{directory} exists and is not a BlockIndex; refusing to replace it. Choose another path.")


def _check_consistency(directory, manifest, blocks, index):
    problems = []
    if int(index.ntotal) != manifest.num_blocks:
        problems.append(f"index.faiss holds {index.ntotal} vectors, the manifest says {manifest.num_blocks}")
    if len(blocks) != manifest.num_blocks:
        problems.append(f"blocks.arrow holds {len(blocks)} rows, the manifest says {manifest.num_blocks}")
    if index.d != manifest.dimension:
        problems.append(f"index.faiss is {index.d}-d, the manifest says {manifest.dimension}-d")
    if index.metric_type != 0:
        problems.append("index.faiss does not use the inner-product metric")
    missing = set(TEXT_COLUMNS + ["embeddings"]) - set(blocks.column_names)
    if missing:
        problems.append(f"blocks.arrow lacks columns {sorted(missing)}")
    if problems:
        raise IndexMismatchError(f"The index at {directory} is inconsistent: " + "; ".join(problems) +
                                 ". Rebuild or re-download it.")


def _reset_params(params: dict) -> dict:
    """Defaults to restore after a per-call override when the index had none set."""
    defaults = {"nprobe": 1, "efSearch": 16}
    return {k: defaults[k] for k in params if k in defaults}


def _require_rows(n: int) -> None:
    if n == 0:
        raise ValueError("Cannot build an index of an empty corpus: no blocks were produced. Check the corpus file.")
