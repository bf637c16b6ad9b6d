"""Retrieval from an index, for every caller: `answer()`, open-QA fine-tuning, pretraining and `RealmRetriever`.

- `SearchableIndex` and `RetrievalIndex` (`typing.Protocol`s) say what a model needs of an index; `BlockIndex` and
  `ShardedBlockIndex` of `index_builder` satisfy both (tests check it). The contract is written here, where it is
  relied on, so the model modules (and the code bundle saved next to a model) never import `index_builder`.
- `retrieve_blocks` is the one retrieval path: FAISS (or any index) searches detached float32 queries, optionally
  skipping each query's own document (REALM's trivial-retrieval exclusion), and returns a `RetrievedBlocks`.
- `IndexSlot` is the `index` attribute of a model, checked against the model when it is set.
"""

import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class SearchableIndex(Protocol):
    """The least a model can search: inner products over `dimension`-d block embeddings."""

    @property
    def dimension(self) -> int: ...

    def search(self, query_embeddings: np.ndarray, k: int):
        """float32 queries `[batch, dimension]` -> (scores `[batch, k]`, block_ids `[batch, k]`), best first."""
        ...


@runtime_checkable
class RetrievalIndex(SearchableIndex, Protocol):
    """A `SearchableIndex` that also returns its blocks and their stored embeddings (what answering, fine-tuning and
    pretraining read)."""

    def __len__(self) -> int: ...

    def get_blocks(self, block_ids) -> list:
        """Block ids `[n]` or `[batch, k]` -> dicts (block_id, doc_id, title, text) in the same nesting."""
        ...

    def get_embeddings(self, block_ids) -> np.ndarray:
        """Block ids `[...]` -> their stored embeddings `[..., dimension]`."""
        ...

    def check_compatible(self, model, warn: bool = True) -> bool:
        """Raise when `model` embeds into another dimension; warn and return False when its block tower is not the
        one that embedded this index."""
        ...

    def reading(self):
        """A context manager that keeps the index unchanged (no add or remove from another thread) while held, so
        that a search and the reads of its results see the same blocks."""
        ...


@dataclass
class RetrievedBlocks:
    """What a retrieval found for a batch of queries.

    block_ids, scores: numpy `[batch, k]` (int64, float32; best first; the index's scores, without gradients).
    blocks: per query, its k blocks as dicts (block_id, doc_id, title, text); None when the index holds no texts.
    embeddings: the stored embeddings `[batch, k, dim]` (torch, on the queries' device) when asked for, else None.
    """

    block_ids: np.ndarray
    scores: np.ndarray
    blocks: list | None = None
    embeddings: torch.Tensor | None = None


RETRIEVAL_MODES = ("dense", "lexical", "hybrid")


def retrieve_blocks(index, query_embeddings, num_blocks: int, exclude_doc_ids=None,
                    with_embeddings: bool = False, with_blocks: bool = True, query_texts=None,
                    mode: str | None = None) -> RetrievedBlocks:
    """The top `num_blocks` blocks of each query, none of them from the query's own document.

    Args:
        index: a `SearchableIndex` (a `RetrievalIndex` to get blocks, embeddings or exclusions).
        query_embeddings: `[batch, dim]`, a tensor (detached here) or a numpy array.
        query_texts: the queries' texts `[batch]`, for an index with a lexical part (BM25).
        mode: "dense", "lexical" or "hybrid" (see index_builder's BlockIndex.search); None: the index's default,
            hybrid when it has a lexical part and `query_texts` are given, dense otherwise. The scores returned are
            the index's for that mode; the embeddings (`with_embeddings`) are always the dense ones.
        num_blocks: blocks to keep per query.
        exclude_doc_ids: per query, the doc_id whose blocks are skipped (None: skip nothing for that query). The
            search is widened (doubling, up to the whole index) for the queries whose own document fills its results.
        with_embeddings: also return the blocks' stored embeddings (frozen, as ORQA/REALM fine-tuning reads them).
        with_blocks: return the blocks' texts (False: ids and scores only, nothing read but what exclusions need).
    """
    queries = _as_numpy(query_embeddings)
    batch = queries.shape[0]
    exclude = [None] * batch if exclude_doc_ids is None else [None if d is None else str(d) for d in exclude_doc_ids]
    if len(exclude) != batch:
        raise ValueError(f"Got {len(exclude)} doc ids for {batch} queries; pass one (or None) per query.")
    full = isinstance(index, RetrievalIndex)
    total = len(index) if full else None
    if num_blocks < 1 or (total is not None and num_blocks > total):
        raise ValueError(f"num_blocks={num_blocks} must lie in [1, {total}] (the blocks in the index); lower --top-k.")
    search = _searcher(index, query_texts, mode, batch)
    with index.reading() if full else contextlib.nullcontext():  # the blocks found are still there when read
        if all(doc_id is None for doc_id in exclude):
            scores, block_ids = search(queries, np.arange(batch), num_blocks)
            blocks = index.get_blocks(block_ids) if full and with_blocks else None
        else:
            scores, block_ids, blocks = _search_excluding(index, search, queries, num_blocks, exclude)
            blocks = blocks if with_blocks else None
        found = RetrievedBlocks(np.asarray(block_ids, dtype=np.int64), np.asarray(scores, dtype=np.float32), blocks)
        if with_embeddings:
            # [batch, k, dim]
            stored = torch.from_numpy(np.ascontiguousarray(index.get_embeddings(found.block_ids)))
            found.embeddings = stored.to(query_embeddings) if torch.is_tensor(query_embeddings) else stored
    return found


def check_mode(index, mode: str | None) -> None:
    """Refuse a retrieval mode that is unknown, or that `index` cannot serve (lexical and hybrid need a lexical
    part)."""
    if mode is not None and mode not in RETRIEVAL_MODES:
        raise ValueError(f"The retrieval mode must be one of {RETRIEVAL_MODES} (or None for the index's default), got "
                         f"{mode!r}.")
    if mode in ("lexical", "hybrid") and not getattr(index, "has_lexical", False):
        raise ValueError(f"Retrieval mode {mode!r} needs an index with a lexical part (BM25), and this one has none; "
                         "add one with index.add_lexical() or `realm-build-index --lexical bm25 --output DIR`, or "
                         "retrieve in 'dense' mode.")


def _searcher(index, query_texts, mode, batch: int):
    """search(queries `[b, d]`, rows `[b]` of the batch, k) -> (scores, block_ids), in the requested mode."""
    check_mode(index, mode)
    if mode == "dense" or (mode is None and (query_texts is None or not getattr(index, "has_lexical", False))):
        return lambda queries, rows, k: index.search(queries, k)
    if query_texts is None:
        raise ValueError(f"Retrieval mode {mode!r} searches the queries' texts; pass query_texts (one per query).")
    texts = [query_texts] if isinstance(query_texts, str) else list(query_texts)
    if len(texts) != batch:
        raise ValueError(f"Got {len(texts)} query texts for {batch} queries; pass one text per query.")
    return lambda queries, rows, k: index.search(queries, k, query_texts=[texts[r] for r in rows], mode=mode)


def _search_excluding(index, search, queries: np.ndarray, num_blocks: int, exclude: list):
    """`retrieve_blocks` with exclusions: scores, block_ids `[batch, num_blocks]` and the blocks."""
    batch, total = queries.shape[0], len(index)
    scores = np.zeros((batch, num_blocks), dtype=np.float32)
    block_ids = np.zeros((batch, num_blocks), dtype=np.int64)
    blocks: list = [None] * batch
    pending, width = list(range(batch)), min(total, 2 * num_blocks)
    while pending:
        found_scores, found_ids = search(np.ascontiguousarray(queries[pending]), pending, width)
        found_blocks = index.get_blocks(found_ids)
        still = []
        for row, row_scores, row_ids, row_blocks in zip(pending, found_scores, found_ids, found_blocks):
            keep = [j for j, block in enumerate(row_blocks) if exclude[row] is None or block["doc_id"] != exclude[row]]
            if len(keep) < num_blocks and width < total:
                still.append(row)
                continue
            if len(keep) < num_blocks:
                raise ValueError(f"Only {len(keep)} of the {total} blocks of the index lie outside document "
                                 f"{exclude[row]!r}, fewer than the {num_blocks} to retrieve; lower --top-k or index "
                                 "a larger corpus.")
            keep = keep[:num_blocks]
            scores[row], block_ids[row] = row_scores[keep], row_ids[keep]
            blocks[row] = [row_blocks[j] for j in keep]
        pending, width = still, min(total, 2 * width)
    return scores, block_ids, blocks


def _as_numpy(query_embeddings) -> np.ndarray:
    """float32 numpy `[batch, dim]`: FAISS never sees a tensor that needs gradients."""
    if torch.is_tensor(query_embeddings):
        return query_embeddings.detach().float().cpu().numpy()
    return np.asarray(query_embeddings, dtype=np.float32)


class IndexSlot:
    """The `index` attribute of a model: checked against the model when set. A `RetrievalIndex` runs its own
    `check_compatible` (dimension; a warning when its block-tower fingerprint differs); a plain `SearchableIndex` must
    match the dimension; anything else is refused."""

    def __get__(self, model, owner=None):
        return self if model is None else model.__dict__.get("_attached_index")

    def __set__(self, model, index):
        if index is not None:
            if isinstance(index, RetrievalIndex):
                index.check_compatible(model)
            elif isinstance(index, SearchableIndex):
                check_index(index, model.config.retriever_proj_size)
            else:
                raise TypeError(f"{type(index).__name__} is not an index: a model's index needs `dimension` and "
                                "`search(query_embeddings, k)`, as index_builder.BlockIndex has (load one with "
                                "BlockIndex.load_from_disk or BlockIndex.from_pretrained).")
        model.__dict__["_attached_index"] = index


def check_index(index, dimension: int):
    """Refuse a missing index, or one whose embeddings have another dimension than the model's."""
    if index is None:
        raise ValueError("This RealmForOpenQA has no index to retrieve from: pass one with "
                         "RealmForOpenQA.from_pretrained(path, index=index) or set `model.index = index` (build it "
                         "with BlockIndex.from_realm_checkpoint or realm-build-index).")
    if index.dimension != dimension:
        raise ValueError(f"The index holds {index.dimension}-d embeddings but this model produces {dimension}-d ones "
                         "(config.retriever_proj_size); use an index built with this model's block embedder.")
