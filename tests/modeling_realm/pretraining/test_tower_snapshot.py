"""The block tower snapshot of the asynchronous refresh (modeling_realm.pretraining.tower_snapshot): the saved tower is
the one of the step the refresh fell due even when the weights change right after, the optimizer's step waits for the
copy (and only for it), tied weights stay tied, and a snapshot that cannot be saved is a logged, counted failure. With
one training process a refreshed index is loaded in the background (modeling_realm.pretraining.index_load), also failing
loudly."""

import logging
import time

import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from modeling_realm import RealmEmbedder
from modeling_realm.pretraining import refresh, tower_snapshot
from modeling_realm.pretraining.refresh import IndexRefresher
from modeling_realm.pretraining.tower_snapshot import TowerSnapshot, copy_state
from tests.helpers import perturb_
from tests.modeling_realm.pretraining.test_realm import make_world

COPY_DELAY_S = 0.5


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path, num_people=8)


def tower_weights(directory) -> dict:
    return RealmEmbedder.from_pretrained(directory).state_dict()


def assert_same(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def snapshot_of(embedder) -> dict:
    return {name: tensor.detach().clone() for name, tensor in embedder.state_dict().items()}


@pytest.fixture
def slow_copy(monkeypatch):
    """Make every weight copy take COPY_DELAY_S, so that code which does not wait for it would save later weights."""
    copy = tower_snapshot.copy_state

    def slow(embedder):
        time.sleep(COPY_DELAY_S)
        return copy(embedder)

    monkeypatch.setattr(tower_snapshot, "copy_state", slow)


def test_copy_state_copies_tied_tensors_once(world):
    embedder = world["retriever"].embedder
    state = copy_state(embedder)
    original = embedder.state_dict()
    assert state.keys() == original.keys()
    shared = [(a, b) for a in original for b in original if a < b and original[a].data_ptr() == original[b].data_ptr()]
    assert shared, "the tiny tower ties its MLM decoder to the word embeddings"
    for a, b in shared:
        assert state[a] is state[b] and state[a].data_ptr() != original[a].data_ptr()


@pytest.mark.parametrize("copy_now", [True, False])
def test_the_saved_tower_is_the_one_of_the_snapshot(world, tmp_path, slow_copy, copy_now):
    embedder = world["retriever"].embedder
    expected = snapshot_of(embedder)
    snapshot = TowerSnapshot(embedder, world["tokenizer"], tmp_path / "tower", copy_now=copy_now)
    waited = snapshot.wait_for_copy()
    assert (waited == 0.0) if copy_now else (waited > COPY_DELAY_S / 2)
    perturb_(embedder, scale=0.3)  # the optimizer changes the weights once the copy is taken
    snapshot.join()
    assert snapshot.done and snapshot.error is None
    assert_same(tower_weights(tmp_path / "tower"), expected)
    assert (tmp_path / "tower" / "tokenizer.json").is_file()


def test_the_optimizer_step_waits_for_the_copy_and_the_worker_gets_the_due_step(world, tmp_path, slow_copy):
    retriever = world["retriever"].train()
    optimizer = torch.optim.SGD(retriever.parameters(), lr=0.5)
    refresher = IndexRefresher(world["index"], retriever, world["tokenizer"], tmp_path / "versions", mode="async",
                               every=2, block_length=64, optimizer=optimizer)
    started = time.perf_counter()
    assert refresher.after_step(2) is False  # the refresh falls due: the copy starts in the background
    assert time.perf_counter() - started < COPY_DELAY_S / 2
    due = snapshot_of(retriever.embedder)
    # The next step: forward and backward run while the weights are copied; the optimizer step waits for the copy.
    loss = sum(parameter.square().sum() for parameter in retriever.embedder.parameters())
    loss.backward()
    optimizer.step()
    assert refresher.wait_seconds > 0  # the copy was still running (slowed down): the step waited for it
    changed = snapshot_of(retriever.embedder)
    assert any(not torch.equal(changed[name], due[name]) for name in due)
    snapshot = refresher._snapshot[0]
    snapshot.join()
    assert_same(tower_weights(snapshot.directory), due)
    refresher.close()
    assert not snapshot.directory.exists() and not optimizer._optimizer_step_pre_hooks  # hook removed, tower gone


def test_a_tower_that_cannot_be_saved_is_a_logged_failure(world, tmp_path, caplog):
    class BrokenTokenizer:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    retriever = world["retriever"]
    refresher = IndexRefresher(world["index"], retriever, BrokenTokenizer(), tmp_path / "versions", mode="async",
                               every=2, block_length=64)
    caplog.set_level(logging.ERROR, logger=refresh.__name__)
    assert refresher.after_step(2) is False
    refresher._snapshot[0].join()
    assert refresher.after_step(3) is False
    assert refresher.failures == 1 and refresher._worker is None and refresher.version == 0
    assert any("Could not save the block tower of step 2" in r.getMessage() and "disk full" in r.getMessage()
               for r in caplog.records)
    assert not list((tmp_path / "versions" / "towers").glob("step_*"))
    np.testing.assert_array_equal(refresher.index.get_embeddings([0]), world["index"].get_embeddings([0]))
    refresher.close()


def test_one_process_loads_a_refreshed_index_in_the_background(world, tmp_path, monkeypatch):
    from modeling_realm.pretraining import index_load
    from modeling_realm.pretraining.refresh import write_latest

    work_dir = tmp_path / "versions"
    refresher = IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="async",
                               every=1000, block_length=64)
    newer = BlockIndex.from_arrays(world["index"].get_embeddings(np.arange(len(world["index"]))) * 2,
                                   world["index"].blocks["text"][:], progress=False)
    newer.save_to_disk(work_dir / "v000001")
    write_latest(work_dir, 1, "v000001", 3)  # what a worker writes when it finishes
    load = BlockIndex.load_from_disk

    def slow_load(*args, **kwargs):
        time.sleep(COPY_DELAY_S)
        return load(*args, **kwargs)

    monkeypatch.setattr(index_load.BlockIndex, "load_from_disk", slow_load)
    durations, swapped, step = [], False, 3
    while not swapped:
        step += 1
        started = time.perf_counter()
        swapped = refresher.after_step(step)
        durations.append(time.perf_counter() - started)
        time.sleep(0.05)  # a training step
        assert step < 100, "the refreshed index was never swapped in"
    assert max(durations) < COPY_DELAY_S / 2 and len(durations) > 2  # the load ran while steps went on
    assert refresher.version == 1 and refresher.index_step == 3 and refresher.refreshes == 1
    np.testing.assert_array_equal(refresher.index.get_embeddings([0]), world["index"].get_embeddings([0]) * 2)
    refresher.close()


def test_a_refreshed_version_that_does_not_load_is_a_logged_failure(world, tmp_path, caplog):
    from modeling_realm.pretraining.refresh import write_latest

    work_dir = tmp_path / "versions"
    refresher = IndexRefresher(world["index"], world["retriever"], world["tokenizer"], work_dir, mode="async",
                               every=1000, block_length=64)
    (work_dir / "v000001").mkdir(parents=True)  # not a BlockIndex directory
    write_latest(work_dir, 1, "v000001", 3)
    caplog.set_level(logging.ERROR, logger=refresh.__name__)
    for step in range(4, 50):  # the failed load is reported at the first step after it ended
        assert refresher.after_step(step) is False
        if refresher.failures:
            break
        time.sleep(0.02)
    for later in range(step + 1, step + 4):  # the broken version is not tried again at every step
        assert refresher.after_step(later) is False
    assert refresher.failures == 1 and refresher.version == 0 and refresher.index is world["index"]
    assert any("Could not load refreshed index" in r.getMessage() for r in caplog.records)
    refresher.close()
