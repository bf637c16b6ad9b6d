"""Lexical and hybrid search at scale: build time, size on disk, serving memory and latency next to dense IVF-PQ.

    python benchmarks/bench_hybrid.py --num-blocks 1000000 2000000      # README table (~30 min on 2 cores)
    python benchmarks/bench_hybrid.py --quick                           # smoke test (3,000 blocks)

For each size, synthetic blocks with texts (synthetic_embeddings.py: clustered 128-d embeddings, ~190 Zipf-distributed
pseudo-words of a 20,000-word vocabulary per block, so postings are longer than real text's) are saved as a
BlockIndex with an IVF-PQ index (`IVF{4 sqrt(n)},PQ32`, nprobe 32, rerank 25, as bench_search.py). Then:

- `add_lexical(save=True)` adds the BM25 part (timed: the lexical build, nothing re-encoded);
- a fresh process loads the index (`load_from_disk(verify=False)`) and times k=5 searches: dense, lexical, and hybrid
  (the default fusion, each side 20 deep), single queries (median of `--queries`; each query's rows are read once
  untimed, then the three modes take turns in a rotating order; the median of hybrid minus dense per query is
  reported too) and batches of 64 (seconds per query); it
  reports its resident set after the searches (anonymous memory and mapped file pages separately).

Query texts are six words drawn uniformly from vocabulary ranks 100-20,000 (the content words of a question; the
most frequent words play the part of stop words). Writes --json (default WORK_DIR/bench_hybrid.json) and prints a
table, with a linear projection of the lexical part's size to 13,353,718 blocks.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic_embeddings import (  # noqa: E402
    DEFAULT_WORK_DIR,
    _vocabulary,
    ensure_corpus,
    make_queries,
    markdown_table,
    memory_status,
)

K, BATCH, FULL_SIZE = 5, 64, 13_353_718
MODES = ("dense", "lexical", "hybrid")


def build(num_blocks: int, work_dir: Path, factory: str | None = None) -> dict:
    """Save a dense IVF-PQ BlockIndex of `num_blocks` synthetic blocks, then add its lexical part; timings, sizes."""
    import datasets

    from index_builder import BlockIndex

    paths = ensure_corpus(work_dir, num_blocks, texts=True)
    directory = work_dir / f"hybrid-index-{num_blocks}"
    blocks = datasets.Dataset.from_file(str(paths["texts"]), in_memory=False)
    embeddings = np.load(paths["embeddings"], mmap_mode="r")
    factory = factory or f"IVF{max(64, int(4 * np.sqrt(num_blocks)) // 64 * 64)},PQ32"
    started = time.perf_counter()
    index = BlockIndex.build(blocks, embeddings, directory, factory=factory, overwrite=True,
                             search_params={"nprobe": 32}, progress=False)
    dense_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index.add_lexical(save=True, progress=False)
    lexical_seconds = time.perf_counter() - started
    sizes = {name: (directory / name).stat().st_size for name in index.manifest.files}
    lexical_bytes = sum(size for name, size in sizes.items() if name.startswith("bm25/"))
    return {"num_blocks": num_blocks, "directory": str(directory), "factory": factory,
            "dense_build_s": round(dense_seconds, 1),
            "lexical_build_s": round(lexical_seconds, 1), "bytes": sizes, "lexical_bytes": lexical_bytes,
            "num_terms": index.lexical.num_terms, "num_postings": index.lexical.num_postings,
            "build_peak_rss_bytes": memory_status()["peak_rss_bytes"]}


def query_texts(count: int, seed: int = 1) -> list[str]:
    vocab = _vocabulary(0)
    rng = np.random.default_rng(seed)
    return [" ".join(vocab[rng.integers(100, len(vocab), size=6)]) for _ in range(count)]


def serve(directory: str, num_queries: int) -> dict:
    """In this (fresh) process: load the index, time every mode, report the resident set."""
    from index_builder import BlockIndex

    index = BlockIndex.load_from_disk(directory, verify=False)
    loaded = memory_status()
    embeddings = make_queries(max(num_queries, BATCH * 4), seed=1)
    texts = query_texts(len(embeddings))
    result = {"rss_after_load": loaded}
    single = {mode: [] for mode in MODES}
    for mode in MODES:  # warm-up
        index.search(embeddings[:1], K, query_texts=texts[:1], mode=mode)
    for i in range(num_queries):
        # the rows this query reads come into the page cache first (a hybrid search reads both sides' rows), then
        # the modes take turns in a rotating order, so that neither the cache nor the machine's load favours one
        index.search(embeddings[i:i + 1], K, query_texts=texts[i:i + 1], mode="hybrid")
        for mode in MODES[i % 3:] + MODES[:i % 3]:
            start = time.perf_counter()
            index.search(embeddings[i:i + 1], K, query_texts=texts[i:i + 1], mode=mode)
            single[mode].append(time.perf_counter() - start)
    for mode in MODES:
        start = time.perf_counter()
        for first in range(0, len(embeddings), BATCH):
            index.search(embeddings[first:first + BATCH], K, query_texts=texts[first:first + BATCH], mode=mode)
        result[mode] = {"batch1_ms": round(1000 * statistics.median(single[mode]), 2),
                        "batch64_ms_per_query": round(1000 * (time.perf_counter() - start) / len(embeddings), 2)}
    hybrid_extra = [h - d for h, d in zip(single["hybrid"], single["dense"], strict=True)]
    result["hybrid_minus_dense_batch1_ms"] = round(1000 * statistics.median(hybrid_extra), 2)
    result["rss_after_search"] = memory_status()
    return result


def serve_in_fresh_process(directory: str, num_queries: int) -> dict:
    command = [sys.executable, __file__, "--serve", directory, "--queries", str(num_queries)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(rows: list[dict]) -> str:
    mib = 1 << 20
    table = [[f"{r['num_blocks']:,}", r["dense_build_s"], r["lexical_build_s"], f"{r['lexical_bytes'] / mib:,.0f}",
              f"{r['num_postings']:,}"] + [f"{r['serve'][m]['batch1_ms']} / {r['serve'][m]['batch64_ms_per_query']}"
                                           for m in MODES]
             + [r["serve"]["hybrid_minus_dense_batch1_ms"]]
             + [f"{r['serve']['rss_after_search']['rss_anon_bytes'] / mib:,.0f} + "
                f"{r['serve']['rss_after_search']['rss_file_bytes'] / mib:,.0f}"] for r in rows]
    headers = ["blocks", "dense build s", "lexical build s", "lexical MiB", "postings"] + \
        [f"{m} ms (batch 1 / per query at 64)" for m in MODES] + ["hybrid - dense ms (batch 1)",
                                                                  "serving RSS MiB (anon + file)"]
    per_block = rows[-1]["lexical_bytes"] / rows[-1]["num_blocks"]
    seconds = rows[-1]["lexical_build_s"] / rows[-1]["num_blocks"]
    projection = (f"Projected to {FULL_SIZE:,} blocks (linear in blocks, from the largest size): lexical part "
                  f"{per_block * FULL_SIZE / (1 << 30):,.1f} GiB on disk, built in {seconds * FULL_SIZE / 60:,.0f} "
                  "min.")
    return markdown_table(headers, table) + "\n\n" + projection


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-blocks", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="single-query searches per mode (default 200)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None, help="where the results go (default: WORK_DIR/bench_hybrid.json)")
    parser.add_argument("--factory", default=None, help="dense index (default IVF{4 sqrt(n)},PQ32)")
    parser.add_argument("--quick", action="store_true", help="3,000 blocks, IVF64,PQ8, 20 queries: a smoke test")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the fresh serving process
    args = parser.parse_args(argv)
    if args.quick:
        args.num_blocks, args.queries, args.factory = [3000], 20, args.factory or "IVF64,PQ8"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        print(json.dumps(serve(args.serve, args.queries)))
        return None
    work_dir = Path(args.work_dir)
    rows = []
    for num_blocks in args.num_blocks:
        row = build(num_blocks, work_dir, args.factory)
        row["serve"] = serve_in_fresh_process(row["directory"], args.queries)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.json or work_dir / "bench_hybrid.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(report(rows))
    return rows


if __name__ == "__main__":
    main()
