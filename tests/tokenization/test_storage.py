"""Crash-safe writes (tokenization/storage.py): a file is replaced whole or not at all, and a failed write leaves
neither a partial file nor a temporary one behind."""

from pathlib import Path

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


def test_an_interrupted_swap_is_undone_from_its_marker(tmp_path, monkeypatch):
    """Killed between moving the old copy aside and moving the new one in: the next recover puts the old one back."""
    import os

    from tokenization import storage

    target = tmp_path / "index"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = tmp_path / ".index.tmp"
    staging.mkdir()
    real_replace = os.replace

    def die_before_moving_the_new_copy_in(source, destination):
        if Path(source) == staging:
            raise KeyboardInterrupt("killed")
        real_replace(source, destination)

    monkeypatch.setattr(storage.os, "replace", die_before_moving_the_new_copy_in)
    with pytest.raises(KeyboardInterrupt):
        storage.replace_directory(staging, target)
    monkeypatch.setattr(storage.os, "replace", real_replace)
    assert not target.exists() and list(tmp_path.glob(".index.swap-*"))
    assert storage.recover_directory(target) is True
    assert (target / "old.txt").read_text() == "old" and not list(tmp_path.glob(".index.swap-*"))


def test_a_previous_directory_it_did_not_set_aside_is_left_alone(tmp_path, caplog):
    from tokenization.storage import recover_directory

    stranger = tmp_path / "index.previous-mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("the user's")
    assert recover_directory(tmp_path / "index") is False
    assert not (tmp_path / "index").exists() and (stranger / "notes.txt").read_text() == "the user's"
    assert "not set aside by realm-hf and are left alone" in caplog.text


def test_a_locked_directory_refuses_a_second_writer(tmp_path):
    from tokenization.storage import exclusive_lock

    with exclusive_lock(tmp_path, "The index out"):
        with pytest.raises(BlockingIOError, match="The index out is being written by another process"):
            with exclusive_lock(tmp_path, "The index out"):
                pass
    with exclusive_lock(tmp_path, "The index out"):  # released with its holder
        pass
    assert list(tmp_path.iterdir()) == []  # no lock file left behind
