"""Index refresh during REALM pretraining (modeling_realm.pretraining.refresh): a synchronous rebuild holds the current
block tower's embeddings, re-ranking equals the exact top-k of the re-embedded candidates, and the asynchronous worker
writes a new version that the trainer swaps in without waiting, while a failed worker leaves the old index in use."""

import json
import logging
import time

import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from modeling_realm.pretraining import refresh
from modeling_realm.pretraining.realm import embed_blocks_now
from modeling_realm.pretraining.refresh import LATEST, IndexRefresher, read_latest
from modeling_realm.pretraining.tower_snapshot import TowerSnapshot
from modeling_realm.retrieval import retrieve_blocks
from tests.helpers import perturb_
from tests.modeling_realm.pretraining.test_realm import make_world

POLL_BUDGET_S = 1.0  # after_step only reads latest.json (and loads a finished version): far below a worker's run


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path, num_people=8)


def current_embeddings(world) -> np.ndarray:
    return embed_blocks_now(world["retriever"], world["tokenizer"], world["blocks"].to_list()).numpy()


def stored_embeddings(index) -> np.ndarray:
    return index.get_embeddings(np.arange(len(index)))


def test_sync_refresh_embeds_the_blocks_with_the_current_block_tower(world, tmp_path):
    retriever = world["retriever"].train()
    refresher = IndexRefresher(world["index"], retriever, world["tokenizer"], tmp_path / "versions", mode="sync",
                               every=2, block_length=64)
    perturb_(retriever.embedder, scale=0.2)
    assert not np.allclose(stored_embeddings(refresher.index), current_embeddings(world), atol=1e-3)
    assert refresher.after_step(1) is False and refresher.version == 0 and refresher.staleness(1) == 1
    assert refresher.after_step(2) is True
    assert refresher.version == 1 and refresher.staleness(2) == 0 and refresher.staleness(5) == 3
    np.testing.assert_allclose(stored_embeddings(refresher.index), current_embeddings(world), atol=1e-5)
    assert retriever.training  # encoding switched to eval mode only for the rebuild
    assert read_latest(tmp_path / "versions") == {"version": 1, "directory": "v000001", "step": 2}
    # The block tower moves on. Old versions are deleted (the newest two are kept), except the version the last
    # checkpoint (state_dict) names.
    state = refresher.state_dict()
    perturb_(retriever.embedder, scale=0.2, seed=1)
    refresher.after_step(4)
    refresher.after_step(6)
    assert sorted(p.name for p in (tmp_path / "versions").glob("v*")) == ["v000001", "v000002", "v000003"]
    later = refresher.state_dict()
    refresher.after_step(8)
    assert sorted(p.name for p in (tmp_path / "versions").glob("v*")) == ["v000003", "v000004"]
    assert refresher.refreshes == 4
    np.testing.assert_allclose(stored_embeddings(refresher.index), current_embeddings(world), atol=1e-5)
    # A checkpoint's state brings back its version (and its embeddings), or rebuilds it when it is gone.
    fresh = IndexRefresher(world["index"], retriever, world["tokenizer"], tmp_path / "versions", mode="sync", every=2)
    fresh.load_state_dict(later, step=7)
    assert fresh.version == 3 and fresh.index.directory == tmp_path / "versions" / "v000003"
    assert fresh.staleness(7) == 1
    fresh = IndexRefresher(world["index"], retriever, world["tokenizer"], tmp_path / "versions", mode="sync", every=2,
                           block_length=64)
    fresh.load_state_dict(state, step=3)  # version 1 was deleted: rebuilt (as version 1) with the current tower
    assert fresh.version == 1 and fresh.index_step == 3 and fresh.index.directory.name == "v000001"
    np.testing.assert_allclose(stored_embeddings(fresh.index), current_embeddings(world), atol=1e-5)


def test_rerank_keeps_the_exact_top_k_of_the_re_embedded_candidates(world):
    retriever = world["retriever"]
    refresher = IndexRefresher(world["index"], retriever, world["tokenizer"], mode="rerank", rerank_factor=3,
                               block_length=64)
    perturb_(retriever.embedder, scale=0.3)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(6, 16, generator=generator).numpy()
    doc_ids = [world["blocks"][i]["doc_id"] for i in range(6)]
    found = refresher.retrieve(queries, 2, doc_ids)
    stale = retrieve_blocks(world["index"], queries, 6, doc_ids)
    current = current_embeddings(world)
    for row in range(6):
        candidates = stale.block_ids[row]
        scores = current[candidates] @ queries[row]
        best = candidates[np.argsort(-scores, kind="stable")[:2]]
        assert found.block_ids[row].tolist() == best.tolist()
        np.testing.assert_allclose(found.scores[row], np.sort(scores)[::-1][:2], atol=1e-5)
        assert [b["block_id"] for b in found.blocks[row]] == best.tolist()
        assert doc_ids[row] not in {b["doc_id"] for b in found.blocks[row]}
    # The stale index alone would have ranked differently for some query.
    assert any(found.block_ids[row].tolist() != stale.block_ids[row, :2].tolist() for row in range(6))
    assert refresher.after_step(500) is False and refresher.version == 0


def poll_until(refresher, step: int, done, timeout: float = 180.0) -> list[float]:
    """Call after_step(step) until `done()`, as a trainer would between steps; returns each call's duration."""
    durations, deadline = [], time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the refresh worker did not finish in time"
        started = time.perf_counter()
        refresher.after_step(step)
        durations.append(time.perf_counter() - started)
        time.sleep(0.05)  # a training step
    return durations


@pytest.mark.slow
def test_async_refresh_swaps_without_waiting_and_survives_a_failed_worker(world, tmp_path, monkeypatch, caplog):
    retriever = world["retriever"].train()
    work_dir = tmp_path / "versions"
    refresher = IndexRefresher(world["index"], retriever, world["tokenizer"], work_dir, mode="async", every=2,
                               block_length=64, worker_env={"OMP_NUM_THREADS": "1"})
    original_index = refresher.index
    perturb_(retriever.embedder, scale=0.2)

    class CorruptedSnapshot(TowerSnapshot):
        def _run(self, *args):
            super()._run(*args)
            (self.directory / "config.json").write_text("{ not json")

    # 1. A worker that cannot load its block tower: logged, and training goes on with the old index.
    monkeypatch.setattr(refresh, "TowerSnapshot", CorruptedSnapshot)
    caplog.set_level(logging.INFO, logger="modeling_realm.pretraining.refresh")
    started = time.perf_counter()
    assert refresher.after_step(2) is False
    durations = poll_until(refresher, 3, lambda: refresher.failures == 1)
    assert max(durations) < POLL_BUDGET_S and time.perf_counter() - started > 5 * max(durations)
    assert refresher.index is original_index and refresher.version == 0 and refresher.staleness(3) == 3
    assert any("failed with exit code" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert read_latest(work_dir) is None and not list((work_dir / "towers").iterdir())
    assert retrieve_blocks(refresher.index, np.ones((1, 16), np.float32), 2).block_ids.shape == (1, 2)

    # 2. A good worker: its version appears atomically and is swapped in between two steps.
    monkeypatch.setattr(refresh, "TowerSnapshot", TowerSnapshot)
    assert refresher.after_step(4) is False  # starts the worker and returns at once
    expected = current_embeddings(world)
    perturb_(retriever.embedder, scale=0.2, seed=1)  # training goes on while the worker encodes the step-4 tower
    durations = poll_until(refresher, 5, lambda: refresher.version == 1)
    assert len(durations) > 1 and max(durations) < POLL_BUDGET_S, durations
    assert refresher.index_step == 4 and refresher.staleness(5) == 1 and refresher.refreshes == 1
    assert refresher.index.directory == work_dir / "v000001"
    np.testing.assert_allclose(stored_embeddings(refresher.index), expected, atol=1e-5)
    assert json.loads((work_dir / LATEST).read_text())["step"] == 4
    assert BlockIndex.load_from_disk(work_dir / "v000001").manifest.embedder_name == "block tower of step 4"
    refresher.close()
    assert not list((work_dir / "towers").iterdir())


class OtherProcess:
    """What IndexRefresher asks of an accelerator, for a process that is not the main one. `peer_state` is what the
    other process reports for a background index load (refresh.LOADING / FAILED / LOADED)."""

    is_main_process, num_processes, device = False, 2, torch.device("cpu")

    def __init__(self, peer_state=refresh.LOADED):
        self.peer_state, self.gathered = peer_state, []

    def wait_for_everyone(self):
        pass

    def gather(self, tensor):
        self.gathered.append(int(tensor))
        return torch.cat([tensor, torch.tensor([self.peer_state])])


def steps_until_swapped(refresher, first_step, limit_s=30.0):
    """Call after_step on consecutive steps until it swaps (the load runs in a background thread)."""
    step, deadline = first_step, time.monotonic() + limit_s
    while not refresher.after_step(step):
        assert time.monotonic() < deadline, "the refreshed index was never swapped in"
        step += 1
        time.sleep(0.01)
    return step


def test_every_process_swaps_to_the_version_the_main_process_found(world, tmp_path, monkeypatch):
    import accelerate.utils

    work_dir = tmp_path / "versions"
    IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="sync",
                   block_length=64).refresh_now(step=2)
    pointer = read_latest(work_dir)
    sent = []

    def broadcast(objects, from_process=0):  # what the main process would send
        sent.append(objects[0])
        return [pointer]

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    other = IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="async", every=2,
                           accelerator=OtherProcess())
    assert steps_until_swapped(other, 2) >= 2  # step 2 is due: only the main process starts workers
    assert other._worker is None and other.pending is None and set(sent) == {None}
    assert other.version == 1 and other.index.directory == work_dir / "v000001" and other.staleness(3) == 1
    # The main process of a fresh run ignores versions an earlier run left behind.
    monkeypatch.undo()
    main = IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="async", every=1000)
    assert main.after_step(3) is False and main.version == 0


def test_processes_swap_a_refreshed_index_together_and_none_swaps_if_one_cannot_load(world, tmp_path, monkeypatch):
    import accelerate.utils

    work_dir = tmp_path / "versions"
    IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="sync",
                   block_length=64).refresh_now(step=2)
    pointer = read_latest(work_dir)
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects, from_process=0: [pointer])
    accelerator = OtherProcess(peer_state=refresh.LOADING)
    other = IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="async",
                           every=1000, accelerator=accelerator)
    other._loading = None
    other.after_step(1)
    other._loading.join()  # loaded here; the other process is still loading
    assert [other.after_step(step) for step in (2, 3)] == [False, False] and other.version == 0
    assert accelerator.gathered[-2:] == [refresh.LOADED, refresh.LOADED]
    accelerator.peer_state = refresh.LOADED
    assert other.after_step(4) is True and other.version == 1 and other.index_step == 2
    calls = len(accelerator.gathered)
    assert other.after_step(5) is False and len(accelerator.gathered) == calls  # no load under way: no gather

    # a newer version the other process cannot load: neither swaps, it counts as one failure, never retried
    IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="sync",
                   block_length=64).refresh_now(step=6, version=2)
    pointer = read_latest(work_dir)
    accelerator.peer_state = refresh.FAILED
    other.after_step(7)
    other._loading.join()
    assert other.after_step(8) is False and other.version == 1 and other.failures == 1
    assert [other.after_step(step) for step in (9, 10)] == [False, False] and other._loading is None
