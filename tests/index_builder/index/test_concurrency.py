"""A served index under edits (index_builder/index/rw_lock.py): searches, reads and retrieval from several threads
while another thread adds and removes blocks never crash, never fail, and always see consistent blocks."""

import threading
import time

import numpy as np
import torch

from index_builder import BlockIndex
from modeling_realm import retrieve_blocks

DIMENSION = 16


def test_readers_and_an_editor_share_an_index_safely():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, DIMENSION)).astype(np.float32)
    index = BlockIndex.from_arrays(base, [f"block {i}" for i in range(3000)], progress=False)
    queries = torch.from_numpy(base[:32].copy())  # 32 queries: the batched exact (matrix product) path
    errors, done = [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                found = retrieve_blocks(index, queries, 5, with_embeddings=True)
                for row_ids, row_blocks in zip(found.block_ids, found.blocks):
                    assert [block["block_id"] for block in row_blocks] == row_ids.tolist()
                    assert all(block["text"] == (f"block {block['block_id']}" if block["block_id"] < 3000 else "x")
                               for block in row_blocks)
        except Exception as error:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(error)

    def editor():
        try:
            for _ in range(15):
                added = index.add(rng.normal(size=(200, DIMENSION)).astype(np.float32), ["x"] * 200)
                index.remove(added[:150])
        except Exception as error:  # noqa: BLE001
            errors.append(error)
        finally:
            done.set()

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=editor)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == []
    assert len(index) == 3000 + 15 * 50


def test_the_lock_lets_nested_calls_through_and_refuses_an_upgrade():
    import pytest

    from index_builder.index.rw_lock import ReadWriteLock

    lock, order = ReadWriteLock(), []
    with lock.reading():
        writer = threading.Thread(target=lambda: lock.writing().__enter__() or order.append("write"))
        writer.start()
        time.sleep(0.1)  # the writer now waits for this read
        with lock.reading():  # a nested read of the same thread goes before the waiting writer
            order.append("nested read")
        with pytest.raises(RuntimeError, match="edit it after the block ends"):
            with lock.writing():
                pass
    writer.join(5)
    assert order == ["nested read", "write"]
