"""`ShardedBlockIndex`: a BlockIndex split across processes, for indices larger than one process's memory.

Each of the W processes of a `torch.distributed` group holds one slice of the blocks (its own FAISS index and
memory-mapped rows). Every method that touches other slices is a collective: all ranks call it together, in the
same order, each with its own arguments (different batch sizes are fine), as in a data-parallel loop run with
`accelerate launch` or `torchrun`:

```python
index = ShardedBlockIndex.from_disk_slice("my-index")       # rows [rank*n/W, (rank+1)*n/W) of a saved BlockIndex
scores, block_ids = index.search(query_embeddings, k=5)    # this rank's queries against every slice
blocks = index.get_blocks(block_ids)                        # texts fetched from the slices that own them
```

Block ids are global. A slice's BlockIndex may store them directly (`from_disk_slice`) or store 0..m-1 and be
shifted by `block_id_offset` (`from_arrays_slice`, or a BlockIndex you built yourself).

How a search travels: every rank sends its queries to every rank (all_to_all_single with uneven splits, so batch
sizes may differ), each rank searches all queries against its slice, sends each rank the results of that rank's
queries, and each rank merges the W candidate lists of its queries into the global top-k: higher score first,
equal scores by smaller block id. With an exact ("Flat") factory the result equals one exact index of all blocks
(up to ties at the k-th place of a slice, which FAISS resolves itself). Errors that one rank detects (bad queries,
unknown block ids) are agreed on before anything else is exchanged, so every rank raises instead of hanging.
With the nccl backend the exchanged tensors live on the current CUDA device; with gloo on the CPU.

Ending a run: import this package (or transformers) before the process group starts and call
`torch.distributed.destroy_process_group()` at the end (`accelerator.end_training()` does). In torch 2.13,
importing `torch.distributed.fsdp` (transformers does) after `init_process_group` keeps the default group alive
past `destroy_process_group`; gloo's worker threads then release their last all_to_all while the interpreter shuts
down, which can abort the process ("terminate called without an active exception") after all work is done.
"""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.distributed as dist

import index_builder.index.faiss_utils as faiss_utils
from index_builder.index.block_index import DEFAULT_TRAIN_SIZE, BlockIndex
from index_builder.index.blocks_table import embeddings_of, open_blocks
from index_builder.index.fusion import (
    DEFAULT_FUSION,
    DEFAULT_WEIGHT,
    MODES,
    check_fusion,
    check_query_texts,
    fuse,
    hybrid_depth,
    resolve_mode,
)
from index_builder.index.lexical import LexicalIndex
from index_builder.index.manifest import BLOCKS_FILE, IndexMismatchError, Manifest
from tokenization.storage import recover_directory

logger = logging.getLogger(__name__)


class ShardedBlockIndex:
    """This process's slice of a block index; `search`, `get_blocks` and `get_embeddings` see every slice.

    Construction is collective (slices exchange their sizes, dimensions and block-id ranges, which must not
    overlap). Without an initialised `torch.distributed` (or with one process) it behaves like `local_index`.

    Args:
        local_index: this process's slice.
        block_id_offset: added to the slice's block ids to make them global (0 when it stores global ids).
        group: the process group (default: torch.distributed's default group when initialised).
    """

    def __init__(self, local_index: BlockIndex, block_id_offset: int = 0, group=None,
                 lexical: LexicalIndex | None = None, lexical_block_ids=None):
        if not isinstance(local_index, BlockIndex):
            raise TypeError(f"local_index must be a BlockIndex, got {type(local_index).__name__}.")
        if len(local_index) == 0:
            raise ValueError("local_index holds no blocks; every process needs a non-empty slice.")
        self.local_index = local_index
        self.block_id_offset = int(block_id_offset)
        self.group = group
        self.lexical = lexical  # every slice's: the saved index's global lexical part, memory-mapped on each rank
        self._lexical_block_ids = lexical_block_ids  # its rows' global block ids (None: the row numbers)
        self.rank, self.world_size = process_info(group)
        self.device = _device_for(group) if self.world_size > 1 else torch.device("cpu")
        ids = local_index.blocks.data.column("block_id").to_numpy()
        # [m], increasing (BlockIndex keeps block ids sorted)
        self._global_ids = np.asarray(ids, dtype=np.int64) + self.block_id_offset
        # [W, 4]: rows, dimension, smallest and largest global block id of each slice
        stats = self._all_gather_ints([len(local_index), local_index.dimension, self._global_ids[0],
                                       self._global_ids[-1]])
        self.slice_sizes = stats[:, 0].tolist()
        self._first_ids, self._last_ids = stats[:, 2], stats[:, 3]
        _check_slices(stats)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_arrays_slice(cls, embeddings, texts, rank: int | None = None, world_size: int | None = None,
                          titles=None, doc_ids=None, factory: str = "Flat", group=None,
                          **index_kwargs) -> "ShardedBlockIndex":
        """This rank's rows `[rank*n/W, (rank+1)*n/W)` of full arrays, as `BlockIndex.from_arrays` would index them.

        Global block ids are row numbers 0..n-1 (doc ids default to them too); only the slice is indexed.
        `index_kwargs` go to `BlockIndex.from_arrays` (embedder, search_params, ...).
        """
        rank, world_size = _slice_position(rank, world_size, group)
        n = len(embeddings)
        if len(texts) != n:
            raise ValueError(f"Got {len(texts)} texts for {n} embeddings; give one per embedding.")
        start, stop = slice_bounds(n, rank, world_size)
        titles = None if titles is None else list(titles)[start:stop]
        doc_ids = [str(i) for i in range(start, stop)] if doc_ids is None else list(doc_ids)[start:stop]
        local = BlockIndex.from_arrays(embeddings[start:stop], list(texts)[start:stop], titles=titles,
                                       doc_ids=doc_ids, factory=factory, **index_kwargs)
        return cls(local, block_id_offset=start, group=group)

    @classmethod
    def from_disk_slice(cls, directory, rank: int | None = None, world_size: int | None = None,
                        factory: str = "Flat", search_params: dict | None = None, verify: bool = False,
                        group=None, progress: bool = True) -> "ShardedBlockIndex":
        """This rank's rows `[rank*n/W, (rank+1)*n/W)` of a BlockIndex saved with `save_to_disk`.

        Only the slice's embeddings are read (from the memory-mapped blocks file) into a new FAISS index built with
        `factory`; the saved FAISS file is never loaded. Block ids stay those of the saved index.

        Args:
            verify: also check the files' checksums against the manifest (reads every byte once, on every rank).
        """
        rank, world_size = _slice_position(rank, world_size, group)
        directory = Path(directory)
        recover_directory(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"No BlockIndex directory at {directory}; save one with BlockIndex.save_to_disk.")
        manifest = Manifest.read(directory)
        manifest.verify_files(directory, checksums=verify)
        blocks = open_blocks(directory / BLOCKS_FILE)
        if len(blocks) != manifest.num_blocks:
            raise IndexMismatchError(f"{directory / BLOCKS_FILE} holds {len(blocks)} rows but the manifest says "
                                     f"{manifest.num_blocks}; rebuild or re-download the index.")
        start, stop = slice_bounds(len(blocks), rank, world_size)
        local = _index_of_rows(blocks.select(range(start, stop)), manifest, factory, search_params, progress)
        lexical, ids = None, None
        if manifest.lexical is not None:
            lexical = LexicalIndex.load(directory, manifest.lexical)
            ids = None if manifest.contiguous_ids else np.asarray(blocks.data.column("block_id").to_numpy(), np.int64)
        sharded = cls(local, group=group, lexical=lexical, lexical_block_ids=ids)
        if sum(sharded.slice_sizes) != manifest.num_blocks:
            raise ValueError(f"The slices hold {sum(sharded.slice_sizes)} blocks but {directory} has "
                             f"{manifest.num_blocks}: pass the same rank/world_size as torch.distributed (or none).")
        return sharded

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        """Blocks in all slices together."""
        return int(sum(self.slice_sizes))

    @property
    def dimension(self) -> int:
        return self.local_index.dimension

    def __repr__(self) -> str:
        return (f"ShardedBlockIndex(rank={self.rank}, world_size={self.world_size}, blocks={len(self)}, "
                f"slice={len(self.local_index)}, dimension={self.dimension}, factory={self.local_index.factory!r})")

    def reading(self):
        """`BlockIndex.reading` of this rank's slice: edits of it wait until the block ends."""
        return self.local_index.reading()

    def check_compatible(self, model, warn: bool = True) -> bool:
        """`BlockIndex.check_compatible` on this rank's slice (all slices come from one embedder)."""
        return self.local_index.check_compatible(model, warn=warn)

    # ----------------------------------------------------------------- search
    @property
    def has_lexical(self) -> bool:
        return self.lexical is not None

    def search(self, query_embeddings=None, k: int | None = None, *, query_texts=None, mode: str | None = None,
               fusion: str = DEFAULT_FUSION, weight: float = DEFAULT_WEIGHT, depth: int | None = None, **search_params):
        """Collective: global top-`k` blocks for this rank's queries, searched in every slice (as
        `BlockIndex.search`: by embedding, by text or both; every rank must use the same k and mode).

        Returns scores `[batch, k]` float32 and global block_ids `[batch, k]` int64, best first; equal dense scores
        are ordered by block id. `search_params` (nprobe, efSearch, ...) apply to every slice's search. The lexical
        part is global (loaded whole, memory-mapped, by `from_disk_slice`), so lexical results need no exchange;
        hybrid fuses the dense candidates of every slice with it.
        """
        request = (query_embeddings, query_texts, mode, fusion, weight)
        (mode, queries, texts), error = _attempt(self._check_request, request, failed=(None, None, None))
        k_ok = not isinstance(k, bool) and isinstance(k, (int, np.integer)) and k >= 1
        if error is None and not k_ok:
            error = ValueError(f"k must be a positive integer, got {k!r}.")
        batch = 0 if error is not None or queries is None else len(queries)
        # [W, 4]: failed, batch size, k, mode of every rank
        meta = self._all_gather_ints([error is not None, batch, int(k) if k_ok else 0, MODES.index(mode or "dense")])
        self._raise_if_any_failed(meta[:, 0], error, "search")
        k = int(k)
        if (meta[:, 2] != k).any() or (meta[:, 3] != meta[0, 3]).any():
            raise ValueError(f"Every rank must search with the same k and mode; got k={meta[:, 2].tolist()}, modes "
                             f"{[MODES[m] for m in meta[:, 3]]} by rank.")
        if k > len(self):
            raise ValueError(f"k={k} exceeds the {len(self)} blocks in the index; ask for at most {len(self)}.")
        if mode == "lexical":
            scores, rows = self.lexical.search(texts, k)
            return scores, self._lexical_ids(rows)
        width = k if mode == "dense" else hybrid_depth(k, depth, len(self))
        dense_scores, dense_ids = self._dense_search(queries, width, meta[:, 1], search_params)
        if mode == "dense":
            return dense_scores, dense_ids
        found = self.lexical.candidates(texts, width)
        return fuse(dense_scores, dense_ids, [scores for scores, _ in found],
                    [self._lexical_ids(rows) for _, rows in found], k, fusion, weight)

    def _check_request(self, request):
        """(mode, queries `[b, d]` or None, texts or None) of a search, or the error to agree on."""
        query_embeddings, query_texts, mode, fusion, weight = request
        mode = resolve_mode(mode, self.has_lexical, query_embeddings is not None, query_texts is not None)
        queries = None if mode == "lexical" else self.local_index._check_queries(query_embeddings)
        texts = None if mode == "dense" else check_query_texts(query_texts, None if queries is None else len(queries))
        if mode == "hybrid":
            check_fusion(fusion, weight)
        return mode, queries, texts

    def _lexical_ids(self, rows: np.ndarray) -> np.ndarray:
        return rows if self._lexical_block_ids is None else self._lexical_block_ids[rows]

    def _dense_search(self, queries: np.ndarray, k: int, batches: np.ndarray, search_params: dict):
        """Every rank's queries against every slice; the global top-k of this rank's (batches: `[W]` sizes)."""
        batch = len(queries)
        # [sum of batches, d]: every rank's queries, in rank order
        all_queries = np.concatenate([_floats(blob, self.dimension) for blob in
                                      self._all_to_all_bytes([_bytes_of(queries)] * self.world_size)])
        scores, ids = self._search_slice(all_queries, k, search_params)
        starts = np.concatenate([[0], np.cumsum(batches)])
        replies = [_bytes_of(scores[a:b], ids[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        received = self._all_to_all_bytes(replies)
        widths = [min(k, size) for size in self.slice_sizes]
        pieces = [_scores_and_ids(blob, batch, width) for blob, width in zip(received, widths, strict=True)]
        # [batch, sum of widths] candidates from every slice
        candidates = [np.concatenate(column, axis=1) for column in zip(*pieces, strict=True)]
        return merge_top_k(*candidates, k)

    def _search_slice(self, queries: np.ndarray, k: int, search_params: dict):
        """This slice's best min(k, slice size) for `queries` `[b, d]`, with global block ids."""
        width = min(k, len(self.local_index))
        if len(queries) == 0:
            return np.zeros((0, width), dtype=np.float32), np.zeros((0, width), dtype=np.int64)
        scores, ids = self.local_index.search(queries, width, **search_params)
        return scores, ids + self.block_id_offset

    # ----------------------------------------------------------------- blocks
    def get_blocks(self, block_ids):
        """Collective: the blocks with these global ids (dicts: block_id, doc_id, title, text), nested like them."""
        ids, answers = self._ask_owners(block_ids, self._encode_blocks)
        flat = [None] * len(ids)
        for positions, blob in answers:
            for position, block in zip(positions, json.loads(blob.tobytes().decode()), strict=True):
                flat[position] = block
        shaped = np.asarray(block_ids, dtype=np.int64)
        if shaped.ndim <= 1:
            return flat
        width = shaped.shape[-1]
        return [flat[i:i + width] for i in range(0, len(flat), width)]

    def get_embeddings(self, block_ids) -> np.ndarray:
        """Collective: stored float32 embeddings of global block ids, shape `[*block_ids.shape, dimension]`."""
        ids, answers = self._ask_owners(block_ids, self._encode_embeddings)
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for positions, blob in answers:
            out[positions] = _floats(blob, self.dimension)
        return out.reshape(*np.shape(block_ids), self.dimension)

    def _encode_blocks(self, ids: np.ndarray) -> np.ndarray:
        blocks = self.local_index.get_blocks(ids - self.block_id_offset)
        for block in blocks:
            block["block_id"] += self.block_id_offset
        return np.frombuffer(json.dumps(blocks).encode(), dtype=np.uint8)

    def _encode_embeddings(self, ids: np.ndarray) -> np.ndarray:
        return _bytes_of(self.local_index.get_embeddings(ids - self.block_id_offset))

    def _ask_owners(self, block_ids, encode):
        """Send each id to the slice that holds it; returns (flat ids, [(positions, reply bytes)] per slice)."""
        ids, error = _attempt(lambda values: np.asarray(values, dtype=np.int64).reshape(-1), block_ids)
        ids = np.zeros(0, dtype=np.int64) if ids is None else ids
        self._raise_if_any_failed(self._all_gather_ints([error is not None])[:, 0], error, "block lookup")
        owner = self._owner_of(ids)
        asked = [np.flatnonzero(owner == rank) for rank in range(self.world_size)]
        requests = self._all_to_all_bytes([_bytes_of(ids[positions]) for positions in asked])
        wanted = [np.frombuffer(blob.tobytes(), dtype=np.int64) for blob in requests]
        held = [self._holds(ids_of_rank) for ids_of_rank in wanted]
        missing = ids[owner < 0].tolist() + [i for w, h in zip(wanted, held, strict=True) for i in w[~h].tolist()]
        error = KeyError(f"Block ids not in the index: {sorted(missing)[:10]}") if missing else None
        self._raise_if_any_failed(self._all_gather_ints([error is not None])[:, 0], error, "block lookup")
        replies = self._all_to_all_bytes([encode(ids_of_rank) for ids_of_rank in wanted])
        return ids, list(zip(asked, replies, strict=True))

    def _holds(self, ids: np.ndarray) -> np.ndarray:
        """Whether this slice holds each global id."""
        rows = np.clip(np.searchsorted(self._global_ids, ids), 0, len(self._global_ids) - 1)
        return self._global_ids[rows] == ids

    def _owner_of(self, ids: np.ndarray) -> np.ndarray:
        """Rank of the slice whose block-id range holds each id, or -1."""
        order = np.argsort(self._first_ids, kind="stable")
        position = np.searchsorted(self._first_ids[order], ids, side="right") - 1
        owner = order[np.clip(position, 0, None)]
        return np.where((position >= 0) & (ids <= self._last_ids[owner]), owner, -1)

    # ----------------------------------------------------------------- communication
    def _all_gather_ints(self, values) -> np.ndarray:
        """`[W, len(values)]` int64: every rank's values, by rank."""
        mine = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self.device)
        if self.world_size == 1:
            return mine.cpu().numpy()[None]
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine, group=self.group)
        return torch.stack(gathered).cpu().numpy()

    def _all_to_all_bytes(self, blobs: list) -> list:
        """Send `blobs[r]` (uint8 arrays) to rank r; returns what every rank sent to this one, by rank."""
        if self.world_size == 1:
            return list(blobs)
        send_sizes = torch.tensor([len(blob) for blob in blobs], dtype=torch.int64, device=self.device)
        recv_sizes = torch.empty_like(send_sizes)
        dist.all_to_all_single(recv_sizes, send_sizes, group=self.group)
        send = torch.from_numpy(np.concatenate(blobs)).to(self.device)
        recv = torch.empty(int(recv_sizes.sum()), dtype=torch.uint8, device=self.device)
        dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes.tolist(),
                               input_split_sizes=send_sizes.tolist(), group=self.group)
        return np.split(recv.cpu().numpy(), np.cumsum(recv_sizes.cpu().numpy())[:-1])

    def _raise_if_any_failed(self, failed: np.ndarray, error: Exception | None, what: str):
        """Raise on every rank when any rank failed: its own error there, a pointer to it elsewhere."""
        if error is not None:
            raise error
        if failed.any():
            raise RuntimeError(f"ShardedBlockIndex {what} failed on rank(s) {np.flatnonzero(failed).tolist()}; "
                               "see the error raised there.")


def merge_top_k(scores: np.ndarray, block_ids: np.ndarray, k: int):
    """Best `k` of candidates `[batch, c]`: higher score first, equal scores by smaller block id."""
    # [batch, c], sorted by (-score, block_id)
    order = np.lexsort((block_ids, -scores), axis=1)[:, :k]
    return (np.take_along_axis(scores, order, axis=1).astype(np.float32),
            np.take_along_axis(block_ids, order, axis=1).astype(np.int64))


def process_info(group=None) -> tuple[int, int]:
    """(rank, world size) in `group`, or (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def slice_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows `[rank*n/W, (rank+1)*n/W)` of n, the slice of `rank` among `world_size` processes."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}) for world_size={world_size}, got {rank}.")
    if n < world_size:
        raise ValueError(f"Cannot split {n} blocks over {world_size} processes (a slice would be empty); "
                         "use fewer processes or a plain BlockIndex.")
    return rank * n // world_size, (rank + 1) * n // world_size


def _slice_position(rank, world_size, group) -> tuple[int, int]:
    """rank/world_size given or from torch.distributed; given ones must agree with an initialised group."""
    actual_rank, actual_size = process_info(group)
    rank = actual_rank if rank is None else int(rank)
    world_size = actual_size if world_size is None else int(world_size)
    if world_size != actual_size or rank != actual_rank:
        raise ValueError(f"rank={rank}, world_size={world_size} disagree with torch.distributed (rank {actual_rank} "
                         f"of {actual_size}); initialise the process group first (accelerate launch or torchrun) "
                         "or leave rank and world_size unset.")
    return rank, world_size


def _index_of_rows(blocks: datasets.Dataset, manifest: Manifest, factory: str, search_params, progress) -> BlockIndex:
    """A BlockIndex of some memory-mapped rows (no row selection active), keeping their block ids."""
    embeddings = embeddings_of(blocks)
    ids = np.asarray(blocks.data.column("block_id").to_numpy(), dtype=np.int64)
    index = faiss_utils.new_index(manifest.dimension, factory)
    if not index.is_trained:
        size = min(len(ids), max(DEFAULT_TRAIN_SIZE, 39 * faiss_utils.ivf_nlist(index)))
        faiss_utils.train_if_needed(index, embeddings[np.sort(np.random.default_rng(0).choice(len(ids), size, False))])
    faiss_utils.add_in_chunks(index, embeddings, ids, progress=progress)
    params = {**faiss_utils.default_search_params(index, factory), **(search_params or {})}
    faiss_utils.set_search_params(index, params)
    local = Manifest(num_blocks=len(ids), dimension=manifest.dimension, factory=factory,
                     embedder_name=manifest.embedder_name, embedder_fingerprint=manifest.embedder_fingerprint,
                     search_params=params, contiguous_ids=bool(ids[0] == 0 and ids[-1] == len(ids) - 1))
    logger.info("Indexed block ids %d..%d (%d blocks) with %s", ids[0], ids[-1], len(ids), factory)
    return BlockIndex(blocks, index, local)


def _check_slices(stats: np.ndarray):
    """Every rank raises the same error when slices differ in dimension or their block-id ranges overlap."""
    if len(set(stats[:, 1].tolist())) > 1:
        raise IndexMismatchError(f"Slices hold embeddings of different dimensions {stats[:, 1].tolist()} (by rank); "
                                 "build every slice from the same embedder.")
    ranges = stats[np.argsort(stats[:, 2], kind="stable")][:, 2:]
    overlap = ranges[1:, 0] <= ranges[:-1, 1]
    if overlap.any():
        raise ValueError(f"The slices' block-id ranges overlap ({stats[:, 2:].tolist()} by rank); give each slice "
                         "its global ids, e.g. block_id_offset=the slice's first row (from_arrays_slice does this).")


def _device_for(group) -> torch.device:
    """Where collectives need their tensors: the current CUDA device for nccl, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _attempt(function, value, failed=None):
    """(function(value), None), or (`failed`, the ValueError/TypeError/KeyError it raised) to be agreed on first."""
    try:
        return function(value), None
    except (ValueError, TypeError, KeyError) as error:
        return failed, error


def _bytes_of(*arrays) -> np.ndarray:
    """The arrays' raw bytes, concatenated, as one uint8 array."""
    return np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays] +
                          [np.zeros(0, dtype=np.uint8)])


def _floats(blob: np.ndarray, dimension: int) -> np.ndarray:
    return np.frombuffer(blob.tobytes(), dtype=np.float32).reshape(-1, dimension)


def _scores_and_ids(blob: np.ndarray, batch: int, width: int):
    """Split a reply of `[batch, width]` float32 scores followed by int64 block ids."""
    split = batch * width * 4
    scores = np.frombuffer(blob[:split].tobytes(), dtype=np.float32).reshape(batch, width)
    ids = np.frombuffer(blob[split:].tobytes(), dtype=np.int64).reshape(batch, width)
    return scores, ids
