"""ShardedBlockIndex: two gloo processes, each holding half of the blocks, return what one exact index returns."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index_builder import BlockIndex
from index_builder.index.sharded import ShardedBlockIndex, merge_top_k, slice_bounds
from tests.index_builder.index.sharded_worker import NUM_BLOCKS, SEARCHES, corpus, queries, query_texts

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_ranks(out_dir: Path, index_dir: Path):
    """Run sharded_worker as ranks 0 and 1 (torchrun's environment); fail, never hang, if a collective does."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.index_builder.index.sharded_worker", str(out_dir), str(index_dir)]
    processes = [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stderr=subprocess.PIPE, text=True) for r in range(2)]
    errors = []
    try:
        for process in processes:
            errors.append(process.communicate(timeout=120)[1])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, stderr in zip(processes, errors, strict=True):
        assert process.returncode == 0, stderr[-6000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(full exact index, [per-rank arrays], [per-rank reports]) from one two-process run."""
    work = tmp_path_factory.mktemp("sharded")
    embeddings, texts = corpus()
    full = BlockIndex.from_arrays(embeddings, texts, factory="Flat", progress=False, lexical="bm25")
    full.save_to_disk(work / "index")
    launch_two_ranks(work, work / "index")
    arrays = [dict(np.load(work / f"rank{r}.npz", allow_pickle=False)) for r in range(2)]
    reports = [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]
    return full, arrays, reports


@pytest.mark.parametrize("source", ["arrays", "disk"])
def test_two_ranks_search_equals_one_exact_index(two_ranks, source):
    full, arrays, reports = two_ranks
    assert reports[0]["slice_sizes"] == [NUM_BLOCKS // 2, NUM_BLOCKS // 2] and reports[1]["len"] == NUM_BLOCKS
    for rank in range(2):
        for name, (k, *batches) in SEARCHES.items():
            expected_scores, expected_ids = full.search(queries(name, rank), k)
            ids, scores = arrays[rank][f"{source}__{name}__ids"], arrays[rank][f"{source}__{name}__scores"]
            assert ids.shape == (batches[rank], k) and scores.dtype == np.float32 and ids.dtype == np.int64
            np.testing.assert_array_equal(ids, expected_ids)
            np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    # both slices contribute: rank 0's top-5 lists mix blocks from the first and the second half
    top = arrays[0][f"{source}__k5__ids"]
    assert (top < NUM_BLOCKS // 2).any() and (top >= NUM_BLOCKS // 2).any()


@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_two_ranks_lexical_and_hybrid_search_equal_one_index(two_ranks, mode):
    full, arrays, _ = two_ranks
    for rank in range(2):
        for name in ("k5", "empty_rank0"):
            k, batch = SEARCHES[name][0], SEARCHES[name][1 + rank]
            ids = arrays[rank][f"disk__{mode}__{name}__ids"]
            assert ids.shape == (batch, k)
            if batch:
                expected_scores, expected_ids = full.search(queries(name, rank), k, query_texts=query_texts(
                    name, rank), mode=mode)
                np.testing.assert_array_equal(ids, expected_ids)
                np.testing.assert_allclose(arrays[rank][f"disk__{mode}__{name}__scores"], expected_scores, rtol=1e-5)


def test_ranks_searching_in_different_modes_all_raise(two_ranks):
    _, _, reports = two_ranks
    for report in reports:
        assert report["errors"]["mode_differs"][0] == "ValueError" and "same k and mode" in \
            report["errors"]["mode_differs"][1]


@pytest.mark.parametrize("source", ["arrays", "disk"])
def test_two_ranks_fetch_blocks_and_embeddings_from_the_owning_slice(two_ranks, source):
    full, arrays, reports = two_ranks
    for rank in range(2):
        ids = arrays[rank][f"{source}__k5__ids"]
        assert reports[rank][f"{source}__blocks"] == full.get_blocks(ids)
        np.testing.assert_array_equal(arrays[rank][f"{source}__embeddings"], full.get_embeddings(ids))


def test_errors_on_one_rank_raise_on_every_rank_without_hanging(two_ranks):
    _, arrays, reports = two_ranks
    errors = [report["errors"] for report in reports]
    for rank in range(2):
        assert errors[rank]["k_too_large"][0] == "ValueError" and "exceeds the 2000 blocks" in \
            errors[rank]["k_too_large"][1]
        assert errors[rank]["k_differs"][0] == "ValueError" and "same k" in errors[rank]["k_differs"][1]
        assert errors[rank]["overlapping_slices"][0] == "ValueError" and "overlap" in \
            errors[rank]["overlapping_slices"][1]
        np.testing.assert_array_equal(arrays[rank]["after_errors__ids"], arrays[rank]["arrays__k5__ids"])
    # the rank at fault gets the real error, the other a pointer to it
    assert errors[1]["bad_queries_on_rank1"][0] == "IndexMismatchError"
    assert errors[0]["bad_queries_on_rank1"][0] == "RuntimeError" and "rank(s) [1]" in \
        errors[0]["bad_queries_on_rank1"][1]
    assert errors[0]["unknown_id_on_rank0"][0] == "KeyError" and str(NUM_BLOCKS + 7) in \
        errors[0]["unknown_id_on_rank0"][1]
    assert errors[1]["unknown_id_on_rank0"][0] == "RuntimeError"


def test_one_process_behaves_like_the_plain_index(tmp_path):
    embeddings, texts = corpus()
    full = BlockIndex.from_arrays(embeddings, texts, progress=False)
    full.save_to_disk(tmp_path / "index")
    query = queries("k5", 1)
    expected_scores, expected_ids = full.search(query, 9)
    for sharded in (ShardedBlockIndex.from_arrays_slice(embeddings, texts, progress=False),
                    ShardedBlockIndex.from_disk_slice(tmp_path / "index", progress=False)):
        assert sharded.world_size == 1 and len(sharded) == NUM_BLOCKS
        scores, ids = sharded.search(query, 9)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
        assert sharded.get_blocks(ids[:, :2]) == full.get_blocks(ids[:, :2])
        with pytest.raises(ValueError, match="exceeds the 2000 blocks"):
            sharded.search(query, NUM_BLOCKS + 1)
        with pytest.raises(KeyError, match="not in the index"):
            sharded.get_embeddings([NUM_BLOCKS])


def test_block_id_offset_maps_a_slice_to_global_ids():
    embeddings, texts = corpus()
    local = BlockIndex.from_arrays(embeddings[100:200], texts[100:200], progress=False)
    sharded = ShardedBlockIndex(local, block_id_offset=100)
    scores, ids = sharded.search(embeddings[[150, 120]], 1)
    assert ids.tolist() == [[150], [120]]
    assert sharded.get_blocks([150])[0]["block_id"] == 150 and sharded.get_blocks([150])[0]["text"] == texts[150]
    np.testing.assert_array_equal(sharded.get_embeddings([[199]]), embeddings[None, [199]])
    with pytest.raises(KeyError):
        sharded.get_blocks([99])


def test_merge_breaks_ties_by_smaller_block_id_and_keeps_k():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]], dtype=np.float32)
    ids = np.array([[4, 1500, 7, 2, 900]], dtype=np.int64)
    merged_scores, merged_ids = merge_top_k(scores, ids, 4)
    assert merged_ids.tolist() == [[7, 900, 1500, 2]]
    assert merged_scores.tolist() == [[3.0, 3.0, 3.0, 2.0]]


def test_slices_cover_every_row_once():
    for n, world_size in [(2000, 2), (7, 3), (10, 10)]:
        bounds = [slice_bounds(n, rank, world_size) for rank in range(world_size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(stop > start for start, stop in bounds)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError, match="fewer processes"):
        slice_bounds(3, 0, 4)


def test_slice_position_must_match_torch_distributed(tmp_path):
    embeddings, texts = corpus()
    BlockIndex.from_arrays(embeddings[:50], texts[:50], progress=False).save_to_disk(tmp_path / "index")
    with pytest.raises(ValueError, match="disagree with torch.distributed"):
        ShardedBlockIndex.from_disk_slice(tmp_path / "index", rank=1, world_size=2)
    with pytest.raises(FileNotFoundError):
        ShardedBlockIndex.from_disk_slice(tmp_path / "missing")
