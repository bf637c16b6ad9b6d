"""Share a BlockIndex through the Hugging Face Hub, as a dataset repo.

A repo made by `push_index_to_hub` holds:

    data/train-00000-of-00003.parquet ...  the blocks (block_id, doc_id, title, text, embeddings) in block-id order
    index.faiss                            the FAISS index
    bm25/terms.arrow, bm25/*.npy           the lexical part (BM25), when the index has one
    manifest.json                          the index manifest; `files` lists the shards and index.faiss with their
                                           sizes and xxh3-64 checksums, `layout` is "hub-parquet", `shards` the order
    README.md                              the dataset card (its configs make `datasets.load_dataset(repo)` work)

`load_index` downloads that snapshot, checks it against the manifest and converts it once into a normal BlockIndex
directory (blocks.arrow, index.faiss, manifest.json) kept next to the snapshot in the Hub cache, under the commit sha,
so later loads memory-map it straight away (also offline). A local directory in either layout loads too.
"""

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from tqdm.auto import tqdm

import index_builder.index.faiss_utils as faiss_utils
from index_builder.hub.card import DATA_DIR, SHARD_PATTERN, render_card
from index_builder.index.blocks_table import WRITE_BATCH, block_schema, write_blocks
from index_builder.index.manifest import (
    BLOCKS_FILE,
    FAISS_FILE,
    HUB_LAYOUT,
    LEXICAL_FILES,
    MANIFEST,
    IndexMismatchError,
    Manifest,
    listed_file,
)
from tokenization.storage import atomic_directory, atomic_write_bytes, recover_directory

logger = logging.getLogger(__name__)

CARD = "README.md"
LEXICAL_PATTERN = "bm25/*"  # an earlier push's lexical part goes with it, as its shards do
CACHE_FOLDER = "realm_index"  # next to `snapshots/` in the Hub cache folder of a repo
LOCAL_CACHE_FOLDER = "realm_indices"  # under HF_HOME (or cache_dir) for local Hub-layout directories
ROW_GROUP_BYTES = 64 << 20
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


# ------------------------------------------------------------------------------------------------------ push
def push_index_to_hub(index, repo_id: str, private: bool | None = None, token: str | None = None,
                      commit_message: str = "Upload BlockIndex", revision: str | None = None,
                      max_shard_size: int | str = "500MB", description: str | None = None, create_pr: bool = False):
    """Upload `index` to the dataset repo `repo_id` (created if needed) in one commit; returns its `CommitInfo`.

    Args:
        private: visibility of a new repo (None: the Hub's default); an existing repo keeps its own.
        revision: branch to commit to (created from main if missing); default main.
        max_shard_size: largest parquet shard, in bytes of Arrow data ("500MB", "1GiB" or an int).
        description: a paragraph about the corpus for the dataset card.
        create_pr: open a pull request instead of committing to the branch.
    Parquet shards left by an earlier push are deleted in the same commit, so the repo holds exactly this index.
    """
    from huggingface_hub import HfApi

    max_bytes = parse_size(max_shard_size)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="realm-hub-push-") as scratch:
        files = write_hub_folder(index, scratch, max_shard_size=max_bytes, repo_id=repo_id, description=description)
        logger.info("Uploading %d files (%d blocks) to dataset repo %s", len(files), len(index), repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=scratch, repo_type="dataset", revision=revision,
                                 commit_message=commit_message, create_pr=create_pr,
                                 delete_patterns=[SHARD_PATTERN, LEXICAL_PATTERN])


def write_hub_folder(index, folder, max_shard_size: int | str = "500MB", repo_id: str | None = None,
                     description: str | None = None) -> list[str]:
    """Write `index` in the Hub layout (parquet shards, index.faiss, manifest.json, README.md) into the existing
    directory `folder`; returns the relative paths written. `push_index_to_hub` uploads exactly this folder."""
    folder = Path(folder)
    shards = write_parquet_shards(index.blocks, folder, parse_size(max_shard_size), index.dimension)
    faiss_utils.write(index.faiss_index, folder / FAISS_FILE)
    lexical = _lexical_files(index)
    if lexical:
        index.lexical.save(folder / Path(LEXICAL_FILES[0]).parent)
    manifest = dataclasses.replace(index.manifest, num_blocks=len(index), layout=HUB_LAYOUT, shards=shards,
                                   search_params=dict(index.manifest.search_params))
    manifest.record_files(folder, shards + [FAISS_FILE] + lexical)
    manifest.write(folder)
    card = render_card(manifest, repo_id or "<namespace>/<name>", description)
    atomic_write_bytes(folder / CARD, card.encode())
    return shards + [FAISS_FILE] + lexical + [MANIFEST, CARD]


def _lexical_files(index) -> list[str]:
    """The lexical part's files, when the index has one."""
    return list(LEXICAL_FILES) if getattr(index, "lexical", None) is not None else []


def write_parquet_shards(blocks, folder: Path, max_shard_bytes: int, dimension: int) -> list[str]:
    """Split the rows of the blocks dataset, in order, into parquet files of at most about `max_shard_bytes` of
    Arrow data each, under `folder/data/`; returns their relative paths (train-00000-of-0000N.parquet, ...)."""
    n = len(blocks)
    row_bytes = max(blocks.data.nbytes / max(blocks.data.num_rows, 1), 1.0)
    num_shards = min(n, max(1, math.ceil(row_bytes * n / max_shard_bytes)))
    bounds = [n * i // num_shards for i in range(num_shards + 1)]
    group = int(max(1, min(WRITE_BATCH, ROW_GROUP_BYTES // row_bytes)))
    schema = block_schema(dimension)
    rows = blocks.with_format("arrow")
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    names = []
    with tqdm(total=n, desc="Writing parquet shards", unit="block", disable=n < WRITE_BATCH) as bar:
        for shard in range(num_shards):
            name = f"{DATA_DIR}/train-{shard:05d}-of-{num_shards:05d}.parquet"
            with pq.ParquetWriter(folder / name, schema) as writer:
                for start in range(bounds[shard], bounds[shard + 1], group):
                    stop = min(start + group, bounds[shard + 1])
                    writer.write_table(rows[start:stop].select(schema.names).cast(schema))
                    bar.update(stop - start)
            names.append(name)
    return names


def parse_size(size: int | str) -> int:
    """Bytes in `size`: an int, or a string such as "500MB", "2GB", "1GiB", "64KB"."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper()) if isinstance(size, str) else None
    if match is None or match.group(2) not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"max_shard_size must be a positive number of bytes or a size like '500MB' or '1GiB', "
                         f"got {size!r}.")
    return max(1, int(float(match.group(1)) * SIZE_UNITS[match.group(2)]))


# ------------------------------------------------------------------------------------------------------ load
def load_index(cls, repo_id_or_path, revision: str | None = None, token: str | None = None, cache_dir=None,
               verify: bool = True, local_files_only: bool | None = None):
    """A BlockIndex from a local directory (saved with `save_to_disk`, or in the Hub layout) or a Hub dataset repo.

    Args:
        revision: branch, tag or commit sha of the Hub repo (default main).
        cache_dir: the Hub cache to use (default HF_HUB_CACHE); for a local Hub-layout directory, where its
            converted copy is kept (default HF_HOME/realm_indices).
        verify: check file checksums against the manifest (sizes are always checked).
        local_files_only: use only the local Hub cache (also implied by HF_HUB_OFFLINE=1).
    Raises:
        FileNotFoundError: no such directory or repo, or offline with the repo not cached (the message says how to
            fix it); IndexMismatchError: a file differs from the manifest (the message names it).
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            logger.warning("revision=%r is ignored: %s is a local directory", revision, path)
        return _load_local(cls, path, cache_dir, verify)
    if isinstance(repo_id_or_path, os.PathLike) or _looks_like_path(str(repo_id_or_path)):
        raise FileNotFoundError(f"No directory {path}: pass the directory of a saved BlockIndex, or a Hub dataset repo "
                                "id such as 'user/my-index'.")
    return _load_from_hub(cls, str(repo_id_or_path), revision, token, cache_dir, verify, bool(local_files_only))


def _load_local(cls, directory: Path, cache_dir, verify: bool):
    """A save_to_disk directory loads as is; a Hub-layout one is converted once into a cached copy."""
    recover_directory(directory)
    if (directory / BLOCKS_FILE).exists() or not (directory / MANIFEST).exists():
        return cls.load_from_disk(directory, verify=verify)
    manifest = Manifest.read(directory)  # checked: a regular file of bounded size, field types, file names
    if manifest.layout != HUB_LAYOUT:
        return cls.load_from_disk(directory, verify=verify)
    from huggingface_hub import constants

    key = xxhash.xxh3_64((directory / MANIFEST).read_bytes()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HOME) / LOCAL_CACHE_FOLDER
    target = root / f"local--{key}"
    cached = _load_cached(cls, target, verify)
    if cached is not None:
        return cached
    manifest.verify_files(directory, checksums=verify)
    return _materialise(cls, directory, target, manifest, _shards_of(manifest))


def _load_from_hub(cls, repo_id: str, revision, token, cache_dir, verify: bool, local_files_only: bool):
    """Resolve the commit, reuse its converted copy if there is one, else download, verify and convert."""
    from huggingface_hub import snapshot_download

    kwargs = dict(repo_type="dataset", token=token, cache_dir=cache_dir, local_files_only=local_files_only)
    with _hub_errors(repo_id, revision):
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[MANIFEST], **kwargs))
    sha = snapshot.name
    if not (snapshot / MANIFEST).is_file():
        raise FileNotFoundError(f"Dataset repo {repo_id!r} (commit {sha}) has no {MANIFEST}: it does not hold a "
                                "BlockIndex. Upload one with index.push_to_hub(repo_id), or check the repo id.")
    target = snapshot.parents[1] / CACHE_FOLDER / sha
    cached = _load_cached(cls, target, verify)
    if cached is not None:
        return cached
    repo_folder = snapshot.parents[1]  # the repo's Hub cache folder: its snapshots link into its blobs/
    manifest = Manifest.read(snapshot)  # checked before any file it names is downloaded
    with _hub_errors(repo_id, revision):
        snapshot_download(repo_id, revision=sha, allow_patterns=sorted(manifest.files), **kwargs)
    if manifest.layout != HUB_LAYOUT:  # a save_to_disk directory uploaded as is
        return cls.load_from_disk(snapshot, verify=verify, trusted_root=repo_folder)
    for name in manifest.files:
        try:
            _verify_file(snapshot, manifest, name, verify, repo_folder)
        except IndexMismatchError as error:
            _evict(snapshot, name, repo_folder)
            raise IndexMismatchError(
                f"{name} downloaded from dataset repo {repo_id!r} (commit {sha}) does not match its {MANIFEST}: "
                f"{error} The bad download was removed from the cache: load again to download it again; if this "
                "persists the repo itself is damaged, push the index again.") from error
    shards = _shards_of(manifest)
    logger.info("Converting %s (commit %s) into a BlockIndex directory at %s", repo_id, sha, target)
    return _materialise(cls, snapshot, target, manifest, shards, repo_folder)


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision):
    """Turn huggingface_hub's lookup errors into FileNotFoundError/ValueError that say what to do."""
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except HFValidationError as error:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a valid Hub repo id ({error}); pass "
                                "the directory of a saved BlockIndex or an id such as 'user/my-index'.") from error
    except RevisionNotFoundError as error:
        raise ValueError(f"Dataset repo {repo_id!r} has no revision {revision!r}; pass an existing branch, tag or "
                         "commit sha (or none for main).") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(f"No dataset repo {repo_id!r} on the Hub, or it is private or gated (log in with "
                                "`hf auth login` or pass token=...). BlockIndex.push_to_hub makes dataset repos; check "
                                "the id, or pass a local BlockIndex directory.") from error
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(f"Dataset repo {repo_id!r} is not (fully) in the local Hub cache and the Hub cannot be "
                                "reached (offline: HF_HUB_OFFLINE=1, local_files_only=True, or no connection). Connect "
                                "and unset HF_HUB_OFFLINE to download it once, or pass a local BlockIndex directory."
                                ) from error


def _shards_of(manifest: Manifest) -> list[str]:
    """The parquet shards of a Hub-layout manifest (checked by `Manifest.read`), in row order."""
    return list(manifest.shards or sorted(name for name in manifest.files
                                          if name != FAISS_FILE and name not in LEXICAL_FILES))


def _verify_file(directory: Path, manifest: Manifest, name: str, checksums: bool, trusted_root: Path):
    """Raise IndexMismatchError naming `name` if it is missing, outside `trusted_root`, of the wrong size or (with
    checksums) altered."""
    single = dataclasses.replace(manifest, files={name: manifest.files[name]})
    single.verify_files(directory, checksums=checksums, trusted_root=trusted_root)


def _load_cached(cls, target: Path, verify: bool):
    """The converted copy at `target`, or None if there is none (or it is damaged and must be rebuilt)."""
    recover_directory(target)
    if not (target / MANIFEST).is_file():
        return None
    try:
        return cls.load_from_disk(target, verify=verify)
    except IndexMismatchError as error:
        logger.warning("The cached BlockIndex at %s is damaged (%s); rebuilding it", target, error)
        return None


def _materialise(cls, source: Path, target: Path, manifest: Manifest, shards: list[str], trusted_root=None):
    """Write blocks.arrow from the (verified) parquet shards, link index.faiss and a fresh manifest, atomically."""
    with atomic_directory(target, overwrite=target.exists()) as staging:
        write_blocks(staging / BLOCKS_FILE, manifest.dimension,
                     _parquet_batches(source, shards, manifest.dimension, manifest.num_blocks))
        lexical = list(LEXICAL_FILES) if manifest.lexical is not None else []
        for name in [FAISS_FILE] + lexical:
            (staging / name).parent.mkdir(exist_ok=True)
            _link_or_copy(listed_file(source, name, trusted_root), staging / name)
        local = dataclasses.replace(manifest, files={}, layout=None, shards=None)
        local.record_files(staging, [BLOCKS_FILE, FAISS_FILE] + lexical)
        local.write(staging)
    return cls.load_from_disk(target, verify=False)


def _parquet_batches(directory: Path, shards: list[str], dimension: int, total: int):
    """Record batches of the block schema from the shards, in order, a few thousand rows at a time."""
    schema = block_schema(dimension)
    with tqdm(total=total, desc="Converting parquet shards to blocks.arrow", unit="block",
              disable=total < WRITE_BATCH) as bar:
        for name in shards:
            with pq.ParquetFile(directory / name) as shard:
                missing = sorted(set(schema.names) - set(shard.schema_arrow.names))
                if missing:
                    raise IndexMismatchError(f"{directory / name} lacks columns {missing}; push the index again.")
                for batch in shard.iter_batches(batch_size=WRITE_BATCH, columns=schema.names):
                    yield from pa.Table.from_batches([batch]).cast(schema).to_batches()
                    bar.update(batch.num_rows)


def _link_or_copy(source: Path, target: Path):
    """Hard-link the file (the Hub cache's blob behind its symlink), or copy it where links are impossible."""
    source = source.resolve()
    try:
        os.link(source, target)
    except OSError as error:
        logger.debug("Cannot hard-link %s (%s); copying it", source, error)
        shutil.copyfile(source, target)


def _evict(snapshot: Path, name: str, repo_folder: Path):
    """Remove a bad download from the Hub cache: the snapshot's entry `name` and the blob it points to, and only
    these: nothing outside the snapshot and the repo's blob store is ever deleted."""
    path = snapshot / name
    if not path.absolute().is_relative_to(snapshot.absolute()) or not os.path.lexists(path):
        logger.warning("Not removing %s: it is not a file of the snapshot %s", path, snapshot)
        return
    blob = path.resolve()
    victims = [path] + ([blob] if blob != path and blob.is_relative_to((repo_folder / "blobs").resolve()) else [])
    for victim in victims:
        if victim.is_file() or victim.is_symlink():
            victim.unlink()
    logger.warning("Removed %s from the Hub cache", path)


def _looks_like_path(name: str) -> bool:
    """A string that cannot be a Hub repo id ("name" or "namespace/name") must have meant a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
