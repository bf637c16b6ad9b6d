"""Turn google's open-QA checkpoints into a `BlockIndex`: `block_emb` (weights file) + `block_records.npy` (texts).

`google/realm-orqa-{nq,wq}-openqa` and `google/realm-cc-news-pretrained-openqa` hold, next to config.json, a
weights file whose state dict has `block_emb` `[num_block_records, 128]` float32 (the precomputed block
embeddings) and `block_records.npy`, one UTF-8 block text per row. Their `block_records.npy` is a *pickled* numpy
object array, so reading it can run code: it is refused unless the caller passes `allow_pickle=True`.

`block_emb` is read lazily, a chunk of rows at a time (safetensors `get_slice`, or a memory-mapped
`torch.load(mmap=True, weights_only=True)`), and with an output directory the texts stream through a temporary
Arrow file, so the 13M-row conversion never holds the embeddings, nor the texts twice, in RAM.

The open-QA checkpoints carry only the question tower; the block tower that produced `block_emb` is not in them,
so the manifest records the embedder by name (the repo id or path) and with no weight fingerprint.
"""

import json
import logging
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

BLOCK_EMB = "block_emb"
RECORDS_FILE = "block_records.npy"
# Tried in this order; the index files of sharded checkpoints name the shard that holds block_emb.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
OPENQA_REPOS = ("google/realm-orqa-nq-openqa", "google/realm-orqa-wq-openqa", "google/realm-cc-news-pretrained-openqa")
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
ROWS_PER_BATCH = 65536
TEXT_SCHEMA = pa.schema([("block_id", pa.int64()), ("doc_id", pa.string()), ("title", pa.string()),
                         ("text", pa.string())])


def index_from_realm_checkpoint(cls, path_or_repo, allow_pickle: bool = False, **kwargs):
    """A `cls` (BlockIndex) of an open-QA checkpoint's `block_emb` rows and `block_records.npy` texts.

    Args:
        path_or_repo: a local directory or a Hub model repo id in google's open-QA layout.
        allow_pickle: google's `block_records.npy` is a pickled object array; loading it can execute code, so it
            is read only when this is True (trust the source first). Plain bytes/str arrays need no pickle.
        **kwargs: `output_dir` (or `directory`) streams the index into that directory through `BlockIndex.build`;
            without it the index is built in memory with `BlockIndex.from_arrays`. `revision`, `cache_dir`, `token`
            and `local_files_only` go to `huggingface_hub.hf_hub_download`; everything else (factory, default "Flat"
            so results equal an exhaustive search; embedder_name, default `path_or_repo`; search_params; overwrite;
            progress; ...) goes to the builder.
    Returns:
        the index; block ids are the rows of `block_emb`, doc ids their row numbers, titles empty.
    Raises:
        FileNotFoundError if a file is missing; ValueError if the records need `allow_pickle`, the checkpoint has
        no `block_emb`, or the row counts differ.
    """
    hub_kwargs = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
    output_dir = _output_dir(kwargs)
    kwargs.setdefault("factory", "Flat")
    kwargs.setdefault("embedder_name", str(path_or_repo))
    progress = kwargs.get("progress", True)
    source = CheckpointFiles(path_or_repo, **hub_kwargs)
    records_path = source.require(RECORDS_FILE)
    dtype = _records_dtype(records_path, allow_pickle)  # refuse a pickle before fetching gigabytes of weights
    embeddings = read_block_emb(source)
    records = _load_records(records_path, dtype)
    if len(records) != len(embeddings):
        raise ValueError(f"block_emb has {len(embeddings)} rows but {records_path} has {len(records)} records; they "
                         "must describe the same blocks row for row. Use the weights and records of one checkpoint.")
    if output_dir is None:
        texts = decode_records(records, records_path, progress=progress)
        del records
        return cls.from_arrays(embeddings[0:len(embeddings)], texts, **kwargs)
    output_dir = Path(output_dir)
    if output_dir.exists() and not kwargs.get("overwrite", False):  # fail before hours of work, as build would
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=f".{output_dir.name}.records-",
                                     ignore_cleanup_errors=True) as scratch:
        blocks = _write_text_table(records, records_path, Path(scratch) / "texts.arrow", progress)
        del records  # the texts now live on disk, memory-mapped
        return cls.build(blocks, embeddings, output_dir, **kwargs)


def _output_dir(kwargs: dict):
    output_dir, directory = kwargs.pop("output_dir", None), kwargs.pop("directory", None)
    if output_dir is not None and directory is not None and Path(output_dir) != Path(directory):
        raise ValueError(f"Got output_dir={output_dir!r} and directory={directory!r}; pass only one of them.")
    return output_dir if output_dir is not None else directory


# ----------------------------------------------------------------------------------------------------- files
class CheckpointFiles:
    """Files of a checkpoint in a local directory or a Hub model repo (resolved through the Hub cache)."""

    def __init__(self, path_or_repo, **hub_kwargs):
        self.name = str(path_or_repo)
        self.directory = Path(path_or_repo) if Path(path_or_repo).is_dir() else None
        self.hub_kwargs = hub_kwargs

    def find(self, filename: str) -> Path | None:
        """The local path of `filename`, or None if the checkpoint has no such file."""
        if self.directory is not None:
            path = self.directory / filename
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

        try:
            return Path(hf_hub_download(self.name, filename, **self.hub_kwargs))
        except EntryNotFoundError as error:  # missing on the Hub, or not cached while offline
            logger.debug("%s has no %s: %s", self.name, filename, error)
            return None
        except HFValidationError as error:
            raise FileNotFoundError(f"{self.name!r} is neither a local directory nor a valid Hub repo id ({error}); "
                                    "pass the directory of the checkpoint or an id like google/realm-orqa-nq-openqa."
                                    ) from error
        except RepositoryNotFoundError as error:
            raise FileNotFoundError(f"No Hub repo {self.name!r} (or it is private: log in with `hf auth login`); "
                                    "check the repo id or pass a local directory.") from error

    def require(self, filename: str) -> Path:
        path = self.find(filename)
        if path is None:
            raise FileNotFoundError(f"{self.name} has no {filename}: an open-QA checkpoint needs it (if {self.name} is "
                                    "a Hub repo, check the id and that the file is downloaded or HF_HUB_OFFLINE is "
                                    "unset).")
        return path


# ----------------------------------------------------------------------------------------------------- block_emb
class BlockEmbeddings:
    """Read-only `[num_blocks, dim]` rows of a checkpoint's `block_emb`, read as float32 numpy one slice at a time."""

    def __init__(self, tensor, source: str, handle=None):
        """`tensor`: a memory-mapped torch tensor, or a safetensors slice of the open file `handle` (both lazy)."""
        shape = tuple(tensor.get_shape() if hasattr(tensor, "get_shape") else tensor.shape)
        if len(shape) != 2 or shape[0] == 0:
            raise ValueError(f"block_emb in {source} has shape {list(shape)}; expected [num_blocks, dimension] with "
                             "at least one row. The checkpoint is damaged or not google's open-QA layout.")
        self._tensor, self._handle, self.source, self.shape = tensor, handle, source, shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("BlockEmbeddings supports contiguous slices only, e.g. embeddings[0:1000].")
        start, stop, _ = key.indices(len(self))
        # [stop - start, dim]
        rows = self._tensor[start:stop].float().numpy()
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            rows_with_nan = (start + np.flatnonzero(bad)[:10]).tolist()
            raise ValueError(f"block_emb in {self.source} has NaN or inf in rows {rows_with_nan}; the checkpoint is "
                             "damaged, re-download it.")
        return rows


def read_block_emb(source: CheckpointFiles) -> BlockEmbeddings:
    """The `block_emb` of a checkpoint, without reading the rest of its state dict into RAM."""
    for filename in WEIGHT_FILES:
        path = source.find(filename)
        if path is None:
            continue
        if filename.endswith(".index.json"):
            shard = _shard_of(path)
            path = source.require(shard) if shard is not None else None
        tensor, handle = _open_block_emb(path) if path is not None else (None, None)
        if tensor is None:
            raise ValueError(f"{source.name} ({filename}) has no {BLOCK_EMB!r} tensor: it is not an open-QA "
                             f"checkpoint. Only RealmForOpenQA checkpoints ({', '.join(OPENQA_REPOS)}) carry "
                             "precomputed block embeddings; for another model build the index from a corpus with "
                             "BlockIndex.build.")
        return BlockEmbeddings(tensor, f"{source.name}/{path.name}", handle)
    raise FileNotFoundError(f"{source.name} has no weights file (looked for {', '.join(WEIGHT_FILES)}); pass an "
                            f"open-QA checkpoint such as {OPENQA_REPOS[0]}.")


def _shard_of(index_path: Path) -> str | None:
    """The shard file that holds block_emb, per a sharded checkpoint's index json."""
    weight_map = json.loads(index_path.read_text()).get("weight_map", {})
    return weight_map.get(BLOCK_EMB)


def _open_block_emb(path: Path):
    """(lazily sliced `block_emb` or None if the file has none, the open safetensors file or None)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        return (handle.get_slice(BLOCK_EMB) if BLOCK_EMB in handle.keys() else None), handle
    import torch

    # mmap: tensors stay in the file until their rows are read; weights_only: no code runs while unpickling.
    state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    return state.get(BLOCK_EMB), None


# ----------------------------------------------------------------------------------------------------- records
def _records_dtype(path: Path, allow_pickle: bool) -> np.dtype:
    """Check the header of block_records.npy (nothing is unpickled) and return its dtype."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{path} is a .npy file of format version {version}; expected 1.0 or 2.0 as written by "
                             "np.save of a 1-d array of block texts.")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
    if len(shape) != 1:
        raise ValueError(f"{path} holds an array of shape {list(shape)}; expected one block text per row (1-d).")
    if dtype.hasobject and not allow_pickle:
        raise ValueError(f"{path} is a pickled object array, loading it can execute code; pass allow_pickle=True "
                         "only if you trust the source.")
    if not dtype.hasobject and dtype.kind not in "SU":
        raise ValueError(f"{path} holds {dtype} values; expected block texts (bytes or str, as an object array or a "
                         "fixed-width 'S'/'U' array).")
    return dtype


def _load_records(path: Path, dtype: np.dtype) -> np.ndarray:
    """The records array: memory-mapped for fixed-width bytes/str, unpickled (checked by the caller) for objects."""
    if dtype.hasobject:
        logger.warning("Unpickling %s (allow_pickle=True): only do this for files from a source you trust.", path)
        return np.load(path, allow_pickle=True)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def decode_records(records, path, start: int = 0, progress: bool = False) -> list[str]:
    """Rows of `records` (bytes as UTF-8, or str) as a list of str; `start` is the row number of the first row."""
    texts = []
    for offset, row in enumerate(tqdm(records, desc="decoding block records", disable=not progress,
                                      total=len(records), unit="block", leave=False)):
        if isinstance(row, bytes):
            try:
                row = row.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} row {start + offset} is not valid UTF-8 ({error}); the records file is "
                                 "damaged or not google's block_records.npy. Re-download or re-encode it.") from error
        elif not isinstance(row, str):
            raise TypeError(f"{path} row {start + offset} is {type(row).__name__}; every record must be the block "
                            "text as bytes or str.")
        texts.append(str(row))
    return texts


def _write_text_table(records, path: Path, output: Path, progress: bool) -> datasets.Dataset:
    """Stream records into an Arrow file of (block_id, doc_id, title, text) and memory-map it as a Dataset."""
    with pa.OSFile(str(output), "wb") as sink, pa.ipc.new_stream(sink, TEXT_SCHEMA) as writer:
        starts = range(0, len(records), ROWS_PER_BATCH)
        for start in tqdm(starts, desc="writing block texts", disable=not progress, unit="batch"):
            texts = decode_records(records[start:start + ROWS_PER_BATCH], path, start=start)
            block_ids = np.arange(start, start + len(texts), dtype=np.int64)
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(block_ids), pa.array([str(i) for i in block_ids.tolist()], type=pa.string()),
                 pa.array([""] * len(texts), type=pa.string()), pa.array(texts, type=pa.string())],
                schema=TEXT_SCHEMA))
    return datasets.Dataset.from_file(str(output), in_memory=False)
