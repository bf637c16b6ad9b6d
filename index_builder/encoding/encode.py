"""Blocks -> embeddings with the block tower, in length-sorted batches, resumable and sharded across processes.

The work directory holds `encoding.json` (what is being encoded, and how) and one `chunk-XXXXXX.npy` per
`chunk_size` blocks, each written to a temporary name and renamed into place when complete, then followed by its
size and checksum (`chunk-XXXXXX.xxh3.json`). Chunk `c` belongs to process `c % num_processes`, so under
`accelerate launch --num_processes N` every process encodes its own share; a run that is killed and started again
skips the chunks that were finished and loses at most one chunk per process.
"""

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash
from tqdm.auto import tqdm

from index_builder.encoding.precision import Precision, autocast_for, resolve_precision, tower_in
from index_builder.index.blocks_table import blocks_digest
from index_builder.index.fingerprint import block_embedder_of, weights_fingerprint
from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN, block_inputs
from tokenization.storage import atomic_file, atomic_write_bytes, file_checksum

logger = logging.getLogger(__name__)

ENCODING_FILE = "encoding.json"
DEFAULT_CHUNK_SIZE = 8192


@dataclass
class EncodingPlan:
    """What a work directory encodes; a resumed run must agree with it."""

    num_blocks: int
    dimension: int
    chunk_size: int
    max_length: int
    blocks_digest: str
    embedder_fingerprint: str
    tokenizer_fingerprint: str
    mixed_precision: str
    dtype: str = "float32"  # absent from the plans of older versions, which encoded in float32

    @property
    def precision(self) -> Precision:
        return Precision(self.dtype, self.mixed_precision)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_blocks // self.chunk_size)

    def chunk_rows(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_blocks))


def encode_blocks(blocks, model, tokenizer, work_dir, batch_size: int = 64, max_length: int = DEFAULT_BLOCK_SEQ_LEN,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, accelerator=None, mixed_precision: str = "no",
                  dtype: str = "float32", progress: bool = True) -> "ChunkedEmbeddings":
    """Embed every block of `blocks` (a datasets.Dataset with `title` and `text`) into `work_dir`.

    Args:
        model: a RealmRetriever, RealmScorer or RealmEmbedder; its block tower is used, in eval mode.
        accelerator: an `accelerate.Accelerator` (or None for one process); each process encodes its chunks, then
            all wait for each other.
        mixed_precision: "no", "fp16" or "bf16": autocast over the float32 tower (fp16 needs a GPU).
        dtype: "float32", "bfloat16" or "float16" (GPU only): a copy of the block tower in that dtype encodes
            (faster than autocast on a CPU with native bfloat16); not together with mixed_precision (see
            `precision.py`). Embeddings are stored as float32 either way; the plan records both, so a run resumed
            with another precision is refused.
    Returns the `[num_blocks, dim]` embeddings, read lazily from the chunk files.
    """
    embedder = block_embedder_of(model).eval()
    device = accelerator.device if accelerator is not None else next(embedder.parameters()).device
    embedder.to(device)
    precision = resolve_precision(dtype, mixed_precision, device)
    plan = _plan(blocks, embedder, tokenizer, chunk_size, max_length, precision)
    rank, world = _process_info(accelerator)
    work_dir = Path(work_dir)
    _open_work_dir(work_dir, plan, is_main=rank == 0, accelerator=accelerator)
    mine = [c for c in range(plan.num_chunks) if c % world == rank and not _chunk_is_done(work_dir, c)]
    _log_resume(plan, work_dir, mine, world)
    bar = tqdm(total=sum(len(plan.chunk_rows(c)) for c in mine), desc=f"Encoding blocks [{rank}/{world}]",
               unit="block", disable=not progress or not mine)
    tower = tower_in(embedder, precision) if mine else embedder  # no copy when nothing is left to encode
    autocast = autocast_for(precision, device)
    for chunk in mine:
        rows = plan.chunk_rows(chunk)
        vectors = _encode_rows(blocks, rows, tower, tokenizer, batch_size, max_length, device, autocast, bar)
        _save_chunk(work_dir, chunk, vectors)
    bar.close()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return ChunkedEmbeddings(work_dir)


def chunk_path(work_dir: Path, chunk: int) -> Path:
    return Path(work_dir) / f"chunk-{chunk:06d}.npy"


def checksum_path(work_dir: Path, chunk: int) -> Path:
    """The size and xxh3-64 checksum of a finished chunk, written after it: a chunk without one is unfinished."""
    return Path(work_dir) / f"chunk-{chunk:06d}.xxh3.json"


def _chunk_is_done(work_dir: Path, chunk: int) -> bool:
    """Whether a chunk was finished: its checksum file exists and its size matches (the bytes are checked when the
    index is built). A chunk left without a checksum, or of another size, is removed to be encoded again."""
    path, record = chunk_path(work_dir, chunk), _read_checksum(work_dir, chunk)
    if record is not None and path.exists() and path.stat().st_size == record["bytes"]:
        return True
    if path.exists() or checksum_path(work_dir, chunk).exists():
        logger.warning("%s is unfinished or damaged; encoding it again", path)
        _remove_chunk(work_dir, chunk)
    return False


def _read_checksum(work_dir: Path, chunk: int) -> dict | None:
    try:
        record = json.loads(checksum_path(work_dir, chunk).read_text())
    except (OSError, ValueError) as error:
        logger.debug("No usable checksum for chunk %d in %s: %s", chunk, work_dir, error)
        return None
    return record if isinstance(record, dict) and {"bytes", "xxh3_64"} <= set(record) else None


def _remove_chunk(work_dir: Path, chunk: int) -> None:
    checksum_path(work_dir, chunk).unlink(missing_ok=True)
    chunk_path(work_dir, chunk).unlink(missing_ok=True)


def embed_in_memory(blocks, model, tokenizer, batch_size: int = 64, max_length: int = DEFAULT_BLOCK_SEQ_LEN,
                    dtype: str = "float32", mixed_precision: str = "no") -> np.ndarray:
    """`[len(blocks), dim]` float32 embeddings of a few blocks, in memory (no work directory, no resume): the
    float32 reference of `agreement.py`, and benchmarks."""
    embedder = block_embedder_of(model).eval()
    device = next(embedder.parameters()).device
    precision = resolve_precision(dtype, mixed_precision, device)
    return _encode_rows(blocks, range(len(blocks)), tower_in(embedder, precision), tokenizer, batch_size,
                        max_length, device, autocast_for(precision, device), bar=None)


def _plan(blocks, embedder, tokenizer, chunk_size: int, max_length: int, precision: Precision) -> EncodingPlan:
    if chunk_size < 1 or max_length < 8:
        raise ValueError(f"chunk_size must be >= 1 and max_length >= 8, got {chunk_size} and {max_length}.")
    missing = {"title", "text"} - set(blocks.column_names)
    if missing:
        raise ValueError(f"The blocks lack columns {sorted(missing)} (they have {blocks.column_names}); make them "
                         "with tokenization.split_into_blocks.")
    if len(blocks) == 0:
        raise ValueError("Cannot encode an empty corpus: no blocks were produced. Check the corpus file.")
    return EncodingPlan(num_blocks=len(blocks), dimension=embedder.config.retriever_proj_size,
                        chunk_size=chunk_size, max_length=max_length, blocks_digest=blocks_digest(blocks),
                        embedder_fingerprint=weights_fingerprint(embedder),
                        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                        mixed_precision=precision.mixed_precision, dtype=precision.dtype)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what turns text into ids: the fast tokenizer's normalizer, pre-tokenizer, vocabulary and
    post-processor (its per-call truncation and padding state left out), or a slow tokenizer's vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = sorted(tokenizer.get_vocab().items())
    text = json.dumps(state, sort_keys=True)
    return f"{type(tokenizer).__name__}:{xxhash.xxh3_64_hexdigest(text.encode())}"


def _process_info(accelerator) -> tuple[int, int]:
    if accelerator is not None:
        return accelerator.process_index, accelerator.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _open_work_dir(work_dir: Path, plan: EncodingPlan, is_main: bool, accelerator) -> None:
    """Create the work directory with its plan, or check that an existing one encodes the same thing."""
    path = work_dir / ENCODING_FILE
    if is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        for stale in work_dir.glob(".chunk-*.tmp-*"):  # left by a killed run; no process is encoding yet
            stale.unlink()
        if not path.exists():
            atomic_write_bytes(path, (json.dumps(asdict(plan), indent=2) + "\n").encode())
    if accelerator is not None:
        accelerator.wait_for_everyone()
    existing = json.loads(path.read_text())
    existing.setdefault("dtype", "float32")  # a plan written before dtype existed encoded in float32
    differing = sorted(k for k, v in asdict(plan).items() if existing.get(k) != v)
    if differing:
        raise ValueError(f"{work_dir} holds an unfinished encoding of other blocks or settings (differs in "
                         f"{', '.join(differing)}). Delete it to start over, or pass another work directory.")


def _log_resume(plan: EncodingPlan, work_dir: Path, mine: list[int], world: int) -> None:
    done = sum(chunk_path(work_dir, c).exists() for c in range(plan.num_chunks))
    if done:
        logger.info("Resuming the encoding in %s: %d of %d chunks already done", work_dir, done, plan.num_chunks)
    logger.info("This process encodes %d chunks (%d processes)", len(mine), world)


@torch.no_grad()
def _encode_rows(blocks, rows: range, embedder, tokenizer, batch_size, max_length, device, autocast, bar):
    """Embed blocks `rows` longest first (less padding per batch); returns `[len(rows), dim]` float32 in row order."""
    chunk = blocks.select_columns(["title", "text"])[rows.start:rows.stop]
    titles, texts = chunk["title"], chunk["text"]
    order = np.argsort([-(len(a) + len(b)) for a, b in zip(titles, texts, strict=True)], kind="stable")
    vectors = np.empty((len(rows), embedder.config.retriever_proj_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        inputs = block_inputs(tokenizer, [titles[i] for i in batch], [texts[i] for i in batch], max_length)
        with autocast():
            # [batch, retriever_proj_size]
            projected = embedder(**inputs.to(device), return_dict=True).projected_score
        vectors[batch] = projected.float().cpu().numpy()
        if bar is not None:
            bar.update(len(batch))
    _check_finite(vectors, rows.start)
    return vectors


def _check_finite(vectors: np.ndarray, first_row: int) -> None:
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise FloatingPointError(f"The block embedder produced NaN or inf for blocks {(bad + first_row)[:10].tolist()}"
                                 "; with float16 this is usually overflow: use bfloat16 or float32.")


def _save_chunk(work_dir: Path, chunk: int, vectors: np.ndarray) -> None:
    """The chunk, then its size and checksum (a kill in between leaves a chunk that is encoded again)."""
    path = chunk_path(work_dir, chunk)
    with atomic_file(path) as staging, open(staging, "wb") as handle:
        np.save(handle, vectors, allow_pickle=False)
    record = {"bytes": path.stat().st_size, "xxh3_64": file_checksum(path)}
    atomic_write_bytes(checksum_path(work_dir, chunk), json.dumps(record).encode())


class ChunkedEmbeddings:
    """Read-only `[num_blocks, dim]` view over a finished work directory's chunk files (memory-mapped).

    Supports `len`, `.shape` and `[start:stop]` slices, which is what `BlockIndex.build` reads.
    """

    def __init__(self, work_dir):
        self.work_dir = Path(work_dir)
        self.plan = EncodingPlan(**json.loads((self.work_dir / ENCODING_FILE).read_text()))
        missing = [c for c in range(self.plan.num_chunks) if _read_checksum(self.work_dir, c) is None
                   or not chunk_path(self.work_dir, c).exists()]
        if missing:
            raise FileNotFoundError(f"{self.work_dir} lacks chunks {missing[:10]} of {self.plan.num_chunks}: the "
                                    "encoding is unfinished. Run the same command again to finish it.")
        for chunk in range(self.plan.num_chunks):
            self._verify(chunk)

    def _verify(self, chunk: int) -> None:
        """Refuse a chunk whose bytes differ from its checksum (removing it, so that the next run encodes it
        again), and one whose array is not the `[rows, dim]` float32 the plan says."""
        path, record = chunk_path(self.work_dir, chunk), _read_checksum(self.work_dir, chunk)
        rows = len(self.plan.chunk_rows(chunk))
        problem = None
        if path.stat().st_size != record["bytes"] or file_checksum(path) != record["xxh3_64"]:
            problem = "does not match its checksum (the file was changed or damaged after it was written)"
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape != (rows, self.plan.dimension) or array.dtype != np.float32:
                problem = f"holds a {array.dtype} array {array.shape}, not float32 ({rows}, {self.plan.dimension})"
        if problem is not None:
            _remove_chunk(self.work_dir, chunk)
            raise ValueError(f"{path} {problem}; it was removed. Run the same command again to encode it again.")

    def __len__(self) -> int:
        return self.plan.num_blocks

    @property
    def shape(self) -> tuple[int, int]:
        return self.plan.num_blocks, self.plan.dimension

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ChunkedEmbeddings supports contiguous slices [start:stop] only.")
        start, stop, _ = key.indices(len(self))
        size = self.plan.chunk_size
        parts = []
        for chunk in range(start // size, -(-stop // size)):
            first = chunk * size
            data = self._chunk(chunk)
            parts.append(data[max(start - first, 0):min(stop - first, len(data))])
        # [stop - start, dim]
        return np.concatenate(parts) if parts else np.empty((0, self.plan.dimension), dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """`[len(rows), dim]` embeddings of the given rows, opening each chunk they fall in once."""
        rows = np.asarray(rows, dtype=np.int64)
        found = np.empty((len(rows), self.plan.dimension), dtype=np.float32)
        chunks = rows // self.plan.chunk_size
        for chunk in np.unique(chunks):
            data = self._chunk(int(chunk))
            mine = chunks == chunk
            found[mine] = data[rows[mine] - int(chunk) * self.plan.chunk_size]
        return found

    def _chunk(self, chunk: int) -> np.ndarray:
        """Chunk `chunk`'s `[rows, dim]` embeddings, memory-mapped."""
        return np.load(chunk_path(self.work_dir, chunk), mmap_mode="r", allow_pickle=False)

    def remove_files(self) -> None:
        """Delete the chunk files and the plan once an index has been built from them."""
        for chunk in range(self.plan.num_chunks):
            _remove_chunk(self.work_dir, chunk)
        (self.work_dir / ENCODING_FILE).unlink(missing_ok=True)
