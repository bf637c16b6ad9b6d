"""Synthetic corpora for the benchmarks: clustered block embeddings, queries near them, and block texts.

Real retrieval embeddings are not uniform on the sphere: they gather in topics of very different sizes, and within
a topic they vary along a few directions much more than along the rest (their PCA spectrum decays). This generator
imitates both, so that approximate indices (IVF, PQ, HNSW) meet the structure they are designed for:

- `num_centres` topic centres (default 4096), uniform on the unit sphere of `dimension` (default 128) dimensions;
- topic sizes drawn from a Dirichlet(0.5) distribution (a few large topics, many small ones);
- a block is `normalize(centre + spread * noise)`, where `noise` is Gaussian with a power-law spectrum (standard
  deviation of the i-th axis proportional to (i + 1) ** -0.5, total variance 1) in a fixed random rotation;
  with the default spread 0.8 a block's cosine with its centre is about 0.78, and blocks of one topic have a
  cosine of about 0.6 with each other, as sentence-embedding clusters do;
- queries are drawn the same way from fresh noise (never copies of blocks), so they fall near the data;
- block texts are sequences of pseudo-words (Zipf-distributed over a 20,000-word vocabulary) of about 1.2 KB,
  the length of a 288-wordpiece REALM block, deterministic in (seed, block id).

Everything is deterministic in `seed`. Embeddings are written chunk by chunk into a `.npy` through
`numpy.lib.format.open_memmap`, so 13,353,718 x 128 float32 (6.8 GB) are produced with about 300 MB of RAM.
Texts go to an Arrow IPC stream (block_id, doc_id, title, text) that `datasets.Dataset.from_file` memory-maps.

    python benchmarks/synthetic_embeddings.py --num-blocks 1000000 --work-dir /tmp/realm-benchmarks --texts

This module needs only numpy (pyarrow is imported where texts are written), so the transformers 4.57.6 reference
environment can import it to regenerate the same texts.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

DIMENSION = 128
NUM_CENTRES = 4096
SPREAD = 0.8
CHUNK_ROWS = 1 << 18
VOCAB_SIZE = 20_000
TEXT_BYTES = 1200
FULL_SIZE = 13_353_718


class ClusterModel:
    """The centres, topic weights and noise shape shared by blocks and queries (deterministic in `seed`)."""

    def __init__(self, dimension: int = DIMENSION, num_centres: int = NUM_CENTRES, spread: float = SPREAD,
                 seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dimension, self.spread = dimension, spread
        # [num_centres, dimension], unit rows
        self.centres = _normalize(rng.standard_normal((num_centres, dimension), dtype=np.float32))
        self.weights = rng.dirichlet(np.full(num_centres, 0.5))
        scales = (np.arange(dimension) + 1.0) ** -0.5
        scales /= np.sqrt((scales ** 2).sum())
        rotation, _ = np.linalg.qr(rng.standard_normal((dimension, dimension)))
        # [dimension, dimension]: independent axes with decaying scales, then a random rotation
        self.noise_map = (scales[:, None] * rotation).astype(np.float32)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` unit vectors `[n, dimension]` float32 drawn from the mixture."""
        topics = rng.choice(len(self.centres), size=n, p=self.weights)
        # [n, dimension]
        noise = rng.standard_normal((n, self.dimension), dtype=np.float32) @ self.noise_map
        return _normalize(self.centres[topics] + self.spread * noise)


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(path, num_blocks: int, seed: int = 0, model: ClusterModel | None = None,
                     chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write `[num_blocks, dimension]` float32 embeddings to the `.npy` file `path`, chunk by chunk."""
    from numpy.lib.format import open_memmap

    model = model or ClusterModel(seed=seed)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    out = open_memmap(temporary, mode="w+", dtype=np.float32, shape=(num_blocks, model.dimension))
    for chunk, start in enumerate(range(0, num_blocks, chunk_rows)):
        stop = min(start + chunk_rows, num_blocks)
        out[start:stop] = model.sample(np.random.default_rng([seed, 1, chunk]), stop - start)
    out.flush()
    del out
    os.replace(temporary, path)
    return path


def make_queries(num_queries: int, seed: int = 0, model: ClusterModel | None = None) -> np.ndarray:
    """`[num_queries, dimension]` float32 queries near the data (fresh draws from the same topics)."""
    model = model or ClusterModel(seed=seed)
    return model.sample(np.random.default_rng([seed, 2]), num_queries)


def _vocabulary(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 3])
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    p = 1.0 / np.arange(1, 27)
    lengths = rng.integers(2, 10, size=VOCAB_SIZE)
    return np.array(["".join(rng.choice(letters, size=n, p=p / p.sum())) for n in lengths], dtype=object)


def block_texts(start: int, stop: int, seed: int = 0, vocab: np.ndarray | None = None) -> list[str]:
    """Texts of blocks `start..stop-1`, each about `TEXT_BYTES` bytes of Zipf-distributed pseudo-words."""
    vocab = _vocabulary(seed) if vocab is None else vocab
    rng = np.random.default_rng([seed, 4, start])
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    words = 190  # mean word length ~5.3 + space: 190 words ~ 1.2 KB
    ids = rng.choice(len(vocab), size=(stop - start, words), p=zipf / zipf.sum())
    return [" ".join(row) for row in vocab[ids]]


def write_texts(path, num_blocks: int, seed: int = 0, chunk_rows: int = 65536) -> Path:
    """Stream block_id, doc_id, title, text of `num_blocks` synthetic blocks into an Arrow IPC file at `path`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.schema([("block_id", pa.int64()), ("doc_id", pa.string()), ("title", pa.string()),
                        ("text", pa.string())])
    vocab = _vocabulary(seed)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, num_blocks, chunk_rows):
            stop = min(start + chunk_rows, num_blocks)
            ids = pa.array(np.arange(start, stop, dtype=np.int64))
            doc_ids = pc.cast(pa.array(np.arange(start, stop) // 4), pa.string())  # ~4 blocks per document
            titles = pc.binary_join_element_wise("Document ", doc_ids, "")
            texts = pa.array(block_texts(start, stop, seed, vocab), type=pa.string())
            writer.write_batch(pa.RecordBatch.from_arrays([ids, doc_ids, titles, texts], schema=schema))
    os.replace(temporary, path)
    return path


def ensure_corpus(work_dir, num_blocks: int, seed: int = 0, texts: bool = False) -> dict:
    """Generate (or reuse) the embeddings, and optionally the texts, of a `num_blocks` corpus in `work_dir`.

    Returns {"embeddings": path.npy, "texts": path.arrow or None}. Files are reused when their description in
    `<name>.json` matches, so several benchmarks share one generation.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {"num_blocks": num_blocks, "seed": seed, "dimension": DIMENSION, "num_centres": NUM_CENTRES,
            "spread": SPREAD, "version": 1}
    paths = {"embeddings": work_dir / f"embeddings-{num_blocks}-{seed}.npy", "texts": None}
    _reuse_or_make(paths["embeddings"], spec, lambda p: write_embeddings(p, num_blocks, seed))
    if texts:
        paths["texts"] = work_dir / f"texts-{num_blocks}-{seed}.arrow"
        _reuse_or_make(paths["texts"], spec, lambda p: write_texts(p, num_blocks, seed))
    return paths


def _reuse_or_make(path: Path, spec: dict, make) -> None:
    sidecar = path.with_suffix(path.suffix + ".json")
    if path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == spec:
        return
    make(path)
    sidecar.write_text(json.dumps(spec) + "\n")


# ----------------------------------------------------------------- shared by the benchmark scripts
def memory_status() -> dict:
    """This process's memory from /proc/self/status, in bytes: `peak_rss_bytes` (VmHWM: the peak resident set,
    which starts afresh at exec, unlike getrusage's ru_maxrss), and the current `rss_anon_bytes` (memory the process
    owns) and `rss_file_bytes` (pages of mapped files: clean page cache the kernel reclaims under pressure)."""
    fields = {"VmHWM": "peak_rss_bytes", "RssAnon": "rss_anon_bytes", "RssFile": "rss_file_bytes"}
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            status[fields[name]] = int(value.split()[0]) * 1024
    if "peak_rss_bytes" not in status:  # not Linux: the peak is all that getrusage knows
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        status["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return status


REFERENCE_PYTHON = Path(os.environ.get("REALM_REFERENCE_PYTHON", "/work/venv-ref/bin/python"))
DEFAULT_WORK_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "realm-benchmarks")


def reference_python() -> tuple[Path | None, str]:
    """The transformers 4.57.6 interpreter (env REALM_REFERENCE_PYTHON), or None and the reason it is missing."""
    if not REFERENCE_PYTHON.exists():
        return None, (f"reference skipped: no transformers 4.57.6 environment at {REFERENCE_PYTHON} (create it with "
                      "`python -m venv /work/venv-ref && /work/venv-ref/bin/pip install torch==2.13.0 "
                      "transformers==4.57.6` or set REALM_REFERENCE_PYTHON)")
    return REFERENCE_PYTHON, ""


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats are printed with 4 significant digits."""
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help=f"{FULL_SIZE:,} blocks (the paper's index)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--texts", action="store_true", help="also write the block texts (~1.2 KB each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = ensure_corpus(args.work_dir, FULL_SIZE if args.full else args.num_blocks, args.seed, args.texts)
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
