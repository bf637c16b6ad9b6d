"""One rank of the two-process ShardedBlockIndex test (run by tests/index_builder/index/test_sharded.py).

Reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment like torchrun, joins a gloo group, searches
its own query batches against both slices and writes what it got to `<out>/rank<r>.npz` and `<out>/rank<r>.json`.
Usage: python -m tests.index_builder.index.sharded_worker OUT_DIR SAVED_INDEX_DIR
"""

import json
import os
import sys
from datetime import timedelta

import numpy as np
import torch.distributed as dist

# Imported before the process group starts, on purpose: torch.distributed.fsdp (imported by transformers'
# modeling_utils) keeps a reference to the default group when it is imported after init_process_group, so
# destroy_process_group could not stop gloo's worker threads, and one of them could then abort the interpreter's
# exit ("terminate called without an active exception") while releasing its last all_to_all.
from index_builder import BlockIndex
from index_builder.index.sharded import ShardedBlockIndex

NUM_BLOCKS, DIMENSION = 2000, 16
# name -> (k, query batch size of rank 0, of rank 1); k=1500 exceeds one slice's 1000 rows
SEARCHES = {"k5": (5, 7, 12), "k1500": (1500, 3, 2), "empty_rank0": (4, 0, 5)}


WORDS = ["harbour", "violin", "glacier", "senate", "copper", "orchid", "meteor", "canal", "falcon", "saffron", "quartz"]


def corpus():
    """Clustered random embeddings `[2000, 16]` (like real ones) and their texts; the same in every process."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(25, DIMENSION))
    embeddings = centres[rng.integers(0, 25, NUM_BLOCKS)] + 0.3 * rng.normal(size=(NUM_BLOCKS, DIMENSION))
    texts = [f"block {i} text about {WORDS[i % 11]} and {WORDS[i % 7]}" for i in range(NUM_BLOCKS)]
    return embeddings.astype(np.float32), texts


def query_texts(name: str, rank: int) -> list[str]:
    """The texts of the queries of `queries(name, rank)`, one each."""
    return [f"{WORDS[(i + rank) % 11]} {WORDS[(3 * i) % 7]}" for i in range(SEARCHES[name][1 + rank])]


def queries(name: str, rank: int) -> np.ndarray:
    """The query batch `[b, 16]` that `rank` searches in search `name` (differs by rank and search)."""
    batch = SEARCHES[name][1 + rank]
    rng = np.random.default_rng([rank, list(SEARCHES).index(name)])
    return rng.normal(size=(batch, DIMENSION)).astype(np.float32)


def error_of(function):
    """The (type name, message) `function()` raised, or None."""
    try:
        function()
    except (ValueError, KeyError, RuntimeError) as error:
        return [type(error).__name__, str(error)]
    return None


def run(out_dir: str, index_dir: str, rank: int):
    embeddings, texts = corpus()
    indices = {"arrays": ShardedBlockIndex.from_arrays_slice(embeddings, texts, progress=False),
               "disk": ShardedBlockIndex.from_disk_slice(index_dir, progress=False)}
    arrays, report = {}, {"slice_sizes": indices["disk"].slice_sizes, "len": len(indices["disk"])}
    for source, index in indices.items():
        for name, (k, _, _) in SEARCHES.items():
            scores, ids = index.search(queries(name, rank), k)
            arrays[f"{source}__{name}__scores"], arrays[f"{source}__{name}__ids"] = scores, ids
        arrays[f"{source}__embeddings"] = index.get_embeddings(arrays[f"{source}__k5__ids"])
        report[f"{source}__blocks"] = index.get_blocks(arrays[f"{source}__k5__ids"])
    for mode in ("lexical", "hybrid"):  # the disk slices share the saved index's lexical part
        for name in ("k5", "empty_rank0"):
            k = SEARCHES[name][0]
            scores, ids = indices["disk"].search(queries(name, rank), k, query_texts=query_texts(name, rank),
                                                 mode=mode)
            arrays[f"disk__{mode}__{name}__scores"], arrays[f"disk__{mode}__{name}__ids"] = scores, ids
    index = indices["arrays"]
    dimension = DIMENSION if rank == 0 else DIMENSION - 1
    report["errors"] = {
        "k_too_large": error_of(lambda: index.search(queries("k5", rank), NUM_BLOCKS + 1)),
        "k_differs": error_of(lambda: index.search(queries("k5", rank), 3 + rank)),
        "bad_queries_on_rank1": error_of(lambda: index.search(np.zeros((2, dimension), np.float32), 2)),
        "mode_differs": error_of(lambda: indices["disk"].search(queries("k5", rank), 5, query_texts=query_texts(
            "k5", rank), mode=["lexical", "hybrid"][rank])),
        "unknown_id_on_rank0": error_of(lambda: index.get_blocks([5, NUM_BLOCKS + 7] if rank == 0 else [5])),
        "overlapping_slices": error_of(lambda: ShardedBlockIndex(BlockIndex.from_arrays(
            embeddings[:10], texts[:10], progress=False))),
    }
    # the group is still in step after every error: the same search gives the same answer
    arrays["after_errors__ids"] = index.search(queries("k5", rank), 5)[1]
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **arrays)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump(report, file)


def main():
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        run(sys.argv[1], sys.argv[2], rank)
    finally:
        dist.destroy_process_group()
    leftover = gloo_threads()
    if leftover:
        sys.exit(f"destroy_process_group left {leftover} gloo threads running: something still holds the group")


def gloo_threads() -> int:
    """How many of gloo's worker threads run in this process (Linux; 0 where /proc is absent)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return 0
    names = []
    for task in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, task, "comm")) as file:
                names.append(file.read().strip())
        except FileNotFoundError:  # the thread ended while we listed them
            continue
    return sum(name.startswith("pt_gloo") for name in names)


if __name__ == "__main__":
    main()
