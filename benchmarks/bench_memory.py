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
    memory_status,
    reference_python,
)

K = 5
HEADERS = ["process", "blocks", "peak RSS MB", "at end: anon MB", "at end: file MB", "wall s", "ms/query",
           "on disk MB", "notes"]
# 4.57.6 holds every text in RAM: whole ~1.2 KB texts of 13.35M blocks (~18 GB) plus block_emb (6.8 GB) exceed
# this 24 GB machine, so at full size its texts are cut to this many bytes (a lower bound of its memory).
FULL_REFERENCE_TEXT_BYTES = 100


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
            **memory_status()}


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
    return {"seconds_per_query": elapsed / len(queries), "bytes_fetched": fetched, **memory_status()}


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def measure(args, paths: dict, queries_path: Path, index_dir: Path) -> tuple[list[list], str]:
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--embeddings", str(paths["embeddings"]), "--queries-file", str(queries_path)]
    build = run_child(me + ["--child", "build", "--texts", str(paths["texts"]), "--index-dir", str(index_dir),
                            "--factory", args.factory] + common)
    serve = run_child(me + ["--child", "serve", "--index-dir", str(index_dir)] + common)
    disk = directory_mb(index_dir)
    rows = [["this package: build", args.num_blocks, build["peak_rss_mb"], *at_end(build), build["wall_s"], "n/a",
             disk, f"{args.factory}, {build['search_params']}"],
            ["this package: serve", args.num_blocks, serve["peak_rss_mb"], *at_end(serve), serve["wall_s"],
             1e3 * serve["seconds_per_query"], disk, "memory-mapped blocks, compressed codes in RAM"]]
    python, reason = (None, "4.57.6 not run (--no-reference)") if args.no_reference else reference_python()
    if python is None:
        return rows, reason
    script = str(Path(__file__).resolve().parent / "reference_realm4.py")
    ref = run_child([str(python), script, "serve", "--k", str(K), "--seed", "0", "--embeddings",
                     str(paths["embeddings"]), "--queries", str(queries_path),
                     "--text-bytes", str(args.reference_text_bytes)])
    texts = f"texts cut to {args.reference_text_bytes} B" if args.reference_text_bytes else "whole texts"
    rows.append(["4.57.6 serve", args.num_blocks, ref["peak_rss_mb"], *at_end(ref), ref["wall_s"],
                 1e3 * ref["seconds_per_query"], "n/a", f"block_emb + block_records ({texts}) in RAM, brute force"])
    if args.reference_text_bytes:
        reason = (f"note: 4.57.6 held each text cut to {args.reference_text_bytes} bytes (whole texts do not fit "
                  "in this machine's RAM next to block_emb), so its figure is a lower bound")
    elif ref["bytes_fetched"] != serve["bytes_fetched"]:
        reason = (f"note: the two sides fetched different texts ({serve['bytes_fetched']} vs {ref['bytes_fetched']} "
                  "bytes): the compressed index returned some other blocks than the exact search")
    return rows, reason


def at_end(result: dict) -> list:
    """Anonymous and file-backed resident MB when the measured process finished (n/a where not reported)."""
    return [result[key] / 2 ** 20 if key in result else "n/a" for key in ("rss_anon_bytes", "rss_file_bytes")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help=f"{FULL_SIZE:,} blocks")
    parser.add_argument("--quick", action="store_true", help="20,000 blocks (smoke test)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factory", default=None, help="FAISS factory (default IVF{nlist},PQ32)")
    parser.add_argument("--reference-text-bytes", type=int, default=None,
                        help=f"cut 4.57.6's in-RAM texts to this many bytes (default: whole texts; "
                             f"{FULL_REFERENCE_TEXT_BYTES} with --full)")
    parser.add_argument("--no-reference", action="store_true", help="skip the transformers 4.57.6 run")
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
    if args.reference_text_bytes is None:
        args.reference_text_bytes = FULL_REFERENCE_TEXT_BYTES if args.num_blocks == FULL_SIZE else 0
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
