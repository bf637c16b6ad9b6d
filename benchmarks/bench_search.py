"""Search speed and recall of BlockIndex (exact and compressed) against transformers 4.57.6's brute-force search.

For each index (Flat = exact, in float32 and scored in bfloat16 with float32 re-scoring; IVF-PQ with exact
re-ranking; HNSW) and each query-time setting it prints the build
time, the median latency of one query (batch 1), the time per query in batches of 64, and recall@5 / recall@8
against the exact top-k. The 4.57.6 reference (`torch.einsum` over every block + `torch.topk`, one question at a
time, as `RealmForOpenQA.forward` does) runs in its own virtual environment on the same embeddings file.

    python benchmarks/bench_search.py                      # 1,000,000 blocks
    python benchmarks/bench_search.py --full               # 13,353,718 blocks (the paper's index)
    python benchmarks/bench_search.py --quick              # 50,000 blocks, smoke test (< 1 minute)
    python benchmarks/bench_search.py --full --exact-only  # the Flat rows alone (float32 and bfloat16)

Memory: the embeddings are generated into a memory-mapped .npy, IVF quantizers are trained on a sample and blocks
are added in chunks, so the peak is about one index plus the page cache (Flat at 13.35M holds 6.8 GB).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_embeddings import (  # noqa: E402
    DEFAULT_WORK_DIR,
    FULL_SIZE,
    ensure_corpus,
    make_queries,
    markdown_table,
    reference_python,
)

from index_builder import BlockIndex  # noqa: E402

K = 8
BATCH = 64
# HNSW32 took 280 s and 0.8 GB to build at 1M blocks here; at 13.35M it would take hours and 10 GB: not measured.
HNSW_MAX_BLOCKS = 2_000_000
# Batch-1 latency is measured twice: with FAISS's default OpenMP threads, and with one thread, because on small
# machines waking FAISS's OpenMP pool (which shares the cores with torch's) costs more than a small search.
HEADERS = ["index", "search params", "build s", "index MB", "batch 1 ms (median)", "batch 1 ms, 1 thread",
           "batch 64 ms/query",
           "recall@5", "recall@8", "x faster than 4.57.6 (batch 1)"]


def settings(num_blocks: int, nlist: int | None, exact_only: bool = False) -> list[tuple[str, list[dict]]]:
    """(factory, [search params, ...]) to measure; the first is the exact float32 index (the ground truth)."""
    exact = ("Flat", [{}, {"precision": "bfloat16"}])
    if exact_only:
        return [exact]
    nlist = nlist or default_nlist(num_blocks)
    ivf_pq = f"IVF{nlist},PQ32"
    probes = [(32, 0), (16, 10), (32, 10), (16, 25), (32, 25), (64, 25), (128, 25), (32, 50)]
    chosen = [exact, (ivf_pq, [{"nprobe": nprobe, "rerank": rerank} for nprobe, rerank in probes])]
    if num_blocks <= HNSW_MAX_BLOCKS:
        chosen.append(("HNSW32", [{"efSearch": 64}, {"efSearch": 128}]))
    return chosen


def default_nlist(num_blocks: int) -> int:
    """4096 lists from 320k blocks up (the IVF4096 of the issue); fewer for small corpora (>= 78 blocks a list)."""
    nlist = 4096
    while nlist > 16 and nlist * 78 > num_blocks:
        nlist //= 2
    return nlist


def blocks_table(num_blocks: int) -> datasets.Dataset:
    """Block rows with empty texts (search does not read texts; bench_memory.py measures them)."""
    ids = pa.array(np.arange(num_blocks, dtype=np.int64))
    empty = pa.repeat(pa.scalar("", pa.string()), num_blocks)
    table = pa.table({"block_id": ids, "doc_id": pc.cast(ids, pa.string()), "title": empty, "text": empty})
    return datasets.Dataset(table)


def time_batch1(index: BlockIndex, queries: np.ndarray, threads: int | None = None) -> float:
    """Median seconds of one single-query search; `threads` limits FAISS's OpenMP threads meanwhile."""
    default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or default)
    try:
        index.search(queries[:1], K)  # warm-up
        times = []
        for query in queries:
            start = time.perf_counter()
            index.search(query[None], K)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(default)
    return statistics.median(times)


def time_batched(index: BlockIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Seconds per query in batches of 64, and the ids found `[n, k]`."""
    found = []
    start = time.perf_counter()
    for first in range(0, len(queries), BATCH):
        found.append(index.search(queries[first:first + BATCH], k)[1])
    return (time.perf_counter() - start) / len(queries), np.concatenate(found)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def measure(factory, param_sets, blocks, embeddings, queries1, queries64, truth, work_dir) -> list[dict]:
    directory = Path(tempfile.mkdtemp(prefix="index-", dir=work_dir)) / "index"
    start = time.perf_counter()
    index = BlockIndex.build(blocks, embeddings, directory, factory=factory, progress=False)
    build_s = time.perf_counter() - start
    size_mb = (directory / "index.faiss").stat().st_size / 1e6
    print(f"built {factory} in {build_s:.1f} s", file=sys.stderr, flush=True)
    rows = []
    for params in param_sets:
        if params:
            index.set_search_params(**params)
        index.search(queries64[:BATCH], K)  # warm-up: a bfloat16 Flat makes its bfloat16 copy here, once
        per_query_64, found8 = time_batched(index, queries64, K)
        _, found5 = time_batched(index, queries64, 5)
        truth = found8 if truth is None else truth
        rows.append({"factory": factory, "params": params, "build_s": build_s, "index_mb": size_mb,
                     "batch1_s": time_batch1(index, queries1), "batch1_1thread_s": time_batch1(index, queries1, 1),
                     "batch64_s_per_query": per_query_64,
                     "recall@5": recall(found5, truth, 5), "recall@8": recall(found8, truth, K), "ids": found8})
    if factory == "Flat":
        rows[-1]["interleaved"] = interleaved_precisions(index, queries64)
    del index
    shutil.rmtree(directory.parent, ignore_errors=True)
    return rows


def interleaved_precisions(index: BlockIndex, queries: np.ndarray) -> dict:
    """Seconds per query at batch 64 of the Flat index in float32 and in bfloat16, batch after batch alternately,
    so that a shared machine's changing load falls on both alike; and the ratio of their medians."""
    times = {"float32": [], "bfloat16": []}
    for first in range(0, len(queries), BATCH):
        for precision, kept in times.items():
            start = time.perf_counter()
            index.search(queries[first:first + BATCH], K, precision=precision)
            kept.append((time.perf_counter() - start) / len(queries[first:first + BATCH]))
    medians = {precision: statistics.median(kept) for precision, kept in times.items()}
    return {**medians, "ratio": medians["float32"] / medians["bfloat16"]}


def run_reference(embeddings_path: Path, queries: np.ndarray, work_dir: Path) -> dict:
    python, reason = reference_python()
    if python is None:
        return {"skipped": reason}
    queries_path = work_dir / f"queries-{os.getpid()}.npy"
    np.save(queries_path, queries, allow_pickle=False)
    script = Path(__file__).resolve().parent / "reference_realm4.py"
    try:
        completed = subprocess.run([str(python), str(script), "search", "--embeddings", str(embeddings_path),
                                    "--queries", str(queries_path), "--k", str(K)],
                                   capture_output=True, text=True, check=False)
    finally:
        queries_path.unlink(missing_ok=True)
    if completed.returncode != 0:
        raise RuntimeError(f"The 4.57.6 reference failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def table_rows(rows: list[dict], reference: dict) -> list[list]:
    ref_s = reference.get("median_s")
    out = []
    for row in rows:
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
        ratio = ref_s / min(row["batch1_s"], row["batch1_1thread_s"]) if ref_s else "n/a"
        out.append([row["factory"], params, row["build_s"], row["index_mb"], 1e3 * row["batch1_s"],
                    1e3 * row["batch1_1thread_s"], 1e3 * row["batch64_s_per_query"], row["recall@5"],
                    row["recall@8"], ratio])
    if ref_s:
        out.append(["4.57.6 brute force (einsum + topk)", "batch 1 only", "n/a", "n/a", 1e3 * ref_s,
                    f"({reference['torch_threads']} torch threads)", "n/a",
                    reference["recall@5"], reference["recall@8"], 1.0])
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help=f"{FULL_SIZE:,} blocks")
    parser.add_argument("--quick", action="store_true", help="50,000 blocks and few queries (smoke test)")
    parser.add_argument("--queries", type=int, default=200, help="queries timed one by one (batch 1)")
    parser.add_argument("--batched-queries", type=int, default=512, help="queries timed in batches of 64")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4096 from 1M blocks up)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--no-reference", action="store_true", help="skip the transformers 4.57.6 run")
    parser.add_argument("--exact-only", action="store_true", help="only the Flat index (float32 and bfloat16)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.full:
        args.num_blocks = FULL_SIZE
    if args.quick:
        args.num_blocks, args.queries, args.batched_queries = 50_000, 20, 128
    return args


def main(argv=None):
    args = parse_args(argv)
    work_dir = Path(args.work_dir)
    paths = ensure_corpus(work_dir, args.num_blocks)
    embeddings = np.load(paths["embeddings"], mmap_mode="r")
    # the batch-1 queries are the first of the batched ones, so both share the exact ground truth
    queries = make_queries(max(args.queries, args.batched_queries))
    queries1, queries64 = queries[:args.queries], queries[:args.batched_queries]
    print(f"# search: {args.num_blocks:,} blocks x {embeddings.shape[1]}, {len(queries1)} queries at batch 1, "
          f"{len(queries64)} at batch {BATCH}, k={K}; {os.cpu_count()} CPUs, faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), torch {torch.__version__}", flush=True)
    reference = {"skipped": "--no-reference"} if args.no_reference else run_reference(paths["embeddings"], queries1,
                                                                                        work_dir)
    blocks, rows, truth = blocks_table(args.num_blocks), [], None
    for factory, param_sets in settings(args.num_blocks, args.nlist, args.exact_only):
        rows += measure(factory, param_sets, blocks, embeddings, queries1, queries64, truth, work_dir)
        truth = rows[0]["ids"]
    if "ids" in reference:
        ref_ids = np.asarray(reference.pop("ids"))
        reference["recall@5"] = recall(ref_ids, truth[:len(ref_ids)], 5)
        reference["recall@8"] = recall(ref_ids, truth[:len(ref_ids)], K)
    print(markdown_table(HEADERS, table_rows(rows, reference)))
    pair = next(row["interleaved"] for row in rows if "interleaved" in row)
    print(f"Flat at batch {BATCH}, float32 and bfloat16 batches alternated: {1e3 * pair['float32']:.2f} and "
          f"{1e3 * pair['bfloat16']:.2f} ms/query (medians), bfloat16 {pair['ratio']:.2f}x faster")
    if "skipped" in reference:
        print(reference["skipped"])
    if args.json:
        Path(args.json).write_text(json.dumps({"num_blocks": args.num_blocks, "reference": reference, "rows": [
            {k: v for k, v in row.items() if k != "ids"} for row in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
