"""Crash-safe files and directories for all three packages: write to a temporary sibling, then rename into place.

It lives in `tokenization`, the bottom package, so that every package writes through this one module (the corpus
cache here, index files and embedding chunks in `index_builder`, checkpoints and saved code in `modeling_realm`).

A reader therefore sees either the previous complete artefact or the new complete one, never a half-written one.
Replacing a directory takes two renames (old out of the way, new in); if a process dies between them, the
previous directory is left at `<name>.previous-<id>` and `recover_directory` puts it back. Before the first rename a
hidden marker `.<name>.swap-<id>` records the move, and only a directory named by such a marker is ever moved back:
a `<name>.previous-*` directory that this package did not set aside is left alone.
"""

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

try:  # POSIX only; elsewhere exclusive_lock does not lock
    import fcntl
except ImportError:
    fcntl = None
try:  # optional where this file ships as a model's remote code (it only saves); the package itself requires xxhash
    import xxhash
except ImportError:
    xxhash = None

logger = logging.getLogger(__name__)

CHECKSUM_CHUNK = 8 << 20


@contextlib.contextmanager
def atomic_directory(target, overwrite: bool = False):
    """Yield a temporary directory next to `target`; on success it replaces `target` (on error it is removed)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)


def replace_directory(staging, target) -> None:
    """Move the complete directory `staging` to `target`, replacing what is there (the old copy is renamed aside
    first, under a marker that lets `recover_directory` put it back, so a reader never sees a half-deleted
    `target`)."""
    staging, target = Path(staging), Path(target)
    previous = marker = None
    if target.exists():
        token = uuid.uuid4().hex[:8]
        previous = target.parent / f"{target.name}.previous-{token}"
        marker = _swap_marker(target, token)
        atomic_write_text(marker, previous.name)
        os.replace(target, previous)
    os.replace(staging, target)
    _fsync_directory(target.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
        marker.unlink(missing_ok=True)


def recover_directory(target) -> bool:
    """If `target` is missing because one of this package's swaps was interrupted, move the previous copy back.
    Only a directory recorded by a swap marker is moved; returns True if one was."""
    target = Path(target)
    if target.exists() or not target.parent.exists():
        return False
    markers = sorted(target.parent.glob(f".{target.name}.swap-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for marker in markers:
        previous = target.parent / marker.read_text(encoding="utf-8", errors="replace").strip()
        ours = previous.name == f"{target.name}.previous-{marker.name.rsplit('-', 1)[-1]}"
        if ours and previous.is_dir() and not previous.is_symlink():
            os.replace(previous, target)
            marker.unlink()
            logger.warning("%s was missing after an interrupted save; restored the previous copy from %s", target,
                           previous.name)
            return True
        marker.unlink()  # the swap it recorded finished or was undone
    strangers = sorted(p.name for p in target.parent.glob(f"{target.name}.previous-*"))
    if strangers:
        logger.warning("%s is missing; %s were not set aside by realm-hf and are left alone.", target, strangers)
    return False


def _swap_marker(target: Path, token: str) -> Path:
    return target.parent / f".{target.name}.swap-{token}"


@contextlib.contextmanager
def exclusive_lock(directory, what: str):
    """Hold an exclusive lock on `directory` (flock on the directory itself: no lock file is left behind, and the
    lock goes with the process if it is killed). Another holder makes this raise BlockingIOError naming `what`."""
    if fcntl is None:
        logger.debug("No fcntl on this platform: %s is not locked", directory)
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise BlockingIOError(f"{what} is being written by another process right now; wait for it to finish, "
                                  "or write to another path.") from error
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path):
    """Yield a hidden temporary path next to `path`; on success it is fsynced and renamed to `path`, on error
    removed. For writers that stream into a file of their own (numpy, Arrow)."""
    path = Path(path)
    staging = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        with open(staging, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes):
    """Write `data` to `path` through a temporary file and a rename."""
    with atomic_file(path) as staging:
        staging.write_bytes(data)


def atomic_write_text(path, text: str):
    """Write `text` (UTF-8) to `path` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_checksum(path) -> str:
    """xxh3-64 of a file's bytes, as hex (fast enough to verify multi-GB index files on load)."""
    if xxhash is None:
        raise ImportError("Checksums need the xxhash package: pip install xxhash.")
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHECKSUM_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
