"""Peak memory of serving a block index with its texts: this package against transformers 4.57.6.

Each measurement runs in a fresh subprocess whose peak resident set size is read from the kernel when it exits
(VmHWM of that process alone, read by itself):

- build: `BlockIndex.build` of the synthetic blocks (texts ~1.2 KB) with a compressed FAISS index (IVF-PQ);
- serve: `BlockIndex.load_from_disk` (checksums verified), then per query `search(k=5)` and `get_blocks`;
- 4.57.6 serve: `RealmForOpenQA` with the embeddings in its `block_emb` buffer and `block_records` (an object
  array of the texts' bytes, as 4.x's `RealmRetriever` holds them), brute-force search and text look-up.

Model weights are left out of both sides (the 4.x model has tiny towers), so the difference is the index.

    python benchmarks/bench_memory.py                 # 1,000,000 blocks
    python benchmarks/bench_memory.py --full          # 13,353,718 blocks (needs ~60 GB of disk)
    python benchmarks/bench_memory.py --quick         # 20,000 blocks, smoke test
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_embeddings import (  # noqa: E402
    DEFAULT_WORK_DIR,
    FULL_SIZE,
    ensure_corpus,
    make_queries,
    markdown_table,
    reference_python,
)

K = 5
HEADERS = ["process", "blocks", "peak RSS MB", "wall s", "ms/query", "on disk MB", "notes"]


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM; unlike getrusage's ru_maxrss it does not count the memory of
    the parent that forked us before `exec`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(command: list[str]) -> dict:
    """Run `command`; return its last stdout line as JSON (with the peak RSS it measured itself) and wall time."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, _ = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} ... failed ({process.returncode}):\n{err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result.update(peak_rss_mb=result["peak_rss_bytes"] / 2 ** 20, wall_s=wall)
    return result


def child_build(args) -> dict:
    import datasets

    from index_builder import BlockIndex

    blocks = datasets.Dataset.from_file(args.texts, in_memory=False)
    embeddings = np.load(args.embeddings, mmap_mode="r")
    index = BlockIndex.build(blocks, embeddings, args.index_dir, factory=args.factory, progress=False)
    return {"num_blocks": len(index), "factory": index.factory, "search_params": index.manifest.search_params,
            "peak_rss_bytes": peak_rss_bytes()}


def child_serve(args) -> dict:
    from index_builder import BlockIndex

    index = BlockIndex.load_from_disk(args.index_dir)
    queries = np.load(args.queries_file, allow_pickle=False)
    fetched = 0
    start = time.perf_counter()
    for query in queries:
        _, block_ids = index.search(query[None], K)
        fetched += sum(len(block["text"]) for block in index.get_blocks(block_ids[0]))
    elapsed = time.perf_counter() - start
    return {"seconds_per_query": elapsed / len(queries), "bytes_fetched": fetched,
            "peak_rss_bytes": peak_rss_bytes()}


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def measure(args, paths: dict, queries_path: Path, index_dir: Path) -> tuple[list[list], str]:
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--embeddings", str(paths["embeddings"]), "--queries-file", str(queries_path)]
    build = run_child(me + ["--child", "build", "--texts", str(paths["texts"]), "--index-dir", str(index_dir),
                            "--factory", args.factory] + common)
    serve = run_child(me + ["--child", "serve", "--index-dir", str(index_dir)] + common)
    disk = directory_mb(index_dir)
    rows = [["this package: build", args.num_blocks, build["peak_rss_mb"], build["wall_s"], "n/a", disk,
             f"{args.factory}, {build['search_params']}"],
            ["this package: serve", args.num_blocks, serve["peak_rss_mb"], serve["wall_s"],
             1e3 * serve["seconds_per_query"], disk, "memory-mapped blocks, compressed codes in RAM"]]
    python, reason = reference_python()
    if python is None:
        return rows, reason
    script = str(Path(__file__).resolve().parent / "reference_realm4.py")
    ref = run_child([str(python), script, "serve", "--k", str(K), "--seed", "0", "--embeddings",
                     str(paths["embeddings"]), "--queries", str(queries_path)])
    rows.append(["4.57.6 serve", args.num_blocks, ref["peak_rss_mb"], ref["wall_s"], 1e3 * ref["seconds_per_query"],
                 "n/a", "block_emb + block_records in RAM, brute force"])
    if ref["bytes_fetched"] != serve["bytes_fetched"]:
        reason = (f"note: the two sides fetched different texts ({serve['bytes_fetched']} vs {ref['bytes_fetched']} "
                  "bytes): the compressed index returned some other blocks than the exact search")
    return rows, reason


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help=f"{FULL_SIZE:,} blocks")
    parser.add_argument("--quick", action="store_true", help="20,000 blocks (smoke test)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factory", default=None, help="FAISS factory (default IVF{nlist},PQ32)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    # internal: what a measured subprocess does
    parser.add_argument("--child", choices=["build", "serve"], help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    parser.add_argument("--index-dir", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.full:
        args.num_blocks = FULL_SIZE
    if args.quick:
        args.num_blocks, args.queries = 20_000, 20
        args.factory = args.factory or "IVF64,PQ16"
    if args.factory is None:
        from bench_search import default_nlist

        args.factory = f"IVF{default_nlist(args.num_blocks)},PQ32"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        result = child_build(args) if args.child == "build" else child_serve(args)
        print(json.dumps(result))
        return
    work_dir = Path(args.work_dir)
    paths = ensure_corpus(work_dir, args.num_blocks, texts=True)
    print(f"# memory: {args.num_blocks:,} blocks with ~1.2 KB texts, {args.queries} queries at batch 1, k={K}; "
          f"{os.cpu_count()} CPUs", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="memory-", dir=work_dir))
    try:
        queries_path = scratch / "queries.npy"
        np.save(queries_path, make_queries(args.queries), allow_pickle=False)
        rows, note = measure(args, paths, queries_path, scratch / "index")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(markdown_table(HEADERS, rows))
    if note:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps({"num_blocks": args.num_blocks, "rows": rows, "note": note}) + "\n")


if __name__ == "__main__":
    main()
