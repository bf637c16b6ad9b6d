"""Crash-safe writes (tokenization/storage.py): a file is replaced whole or not at all, and a failed write leaves
neither a partial file nor a temporary one behind."""

import pytest

from tokenization.storage import atomic_file, atomic_write_bytes, atomic_write_text


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_streamed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "chunk.npy"
    atomic_write_bytes(target, b"complete")
    with pytest.raises(RuntimeError, match="killed halfway"):
        with atomic_file(target) as staging:
            staging.write_bytes(b"half")
            raise RuntimeError("killed halfway")
    assert target.read_bytes() == b"complete" and [p.name for p in tmp_path.iterdir()] == ["chunk.npy"]
