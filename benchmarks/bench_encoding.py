"""Index-building throughput: `build_index` against the raw block-encoder forward pass on the same batches.

`build_index` tokenises the blocks, batches them (longest first within each chunk), runs the block tower, writes
the embedding chunks, builds the FAISS index and writes the BlockIndex directory. The raw figure runs only the
forward pass of the same block tower over the same batches, tokenised beforehand; the difference is the overhead of
everything else (target <= 10%). Both are measured in one process (all cores) and in two processes under
`torch.distributed.run` (one thread each; `Accelerator(cpu=True)` finds the process group).

    python benchmarks/bench_encoding.py                 # all-MiniLM-L6-v2 block tower, 2,048 blocks of ~1.2 KB
    python benchmarks/bench_encoding.py --quick         # a tiny random tower, 512 blocks (smoke test)
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_embeddings import DEFAULT_WORK_DIR, block_texts, markdown_table  # noqa: E402

BATCH_SIZE = 64
MAX_LENGTH = 288  # a REALM block
HEADERS = ["processes", "threads/process", "raw forward blocks/s", "build_index blocks/s", "overhead %",
           "build_index s", "raw forward s"]


def load_model(quick: bool):
    """The MiniLM-initialised retriever (or a tiny random one) and the MiniLM WordPiece tokenizer."""
    from transformers import AutoTokenizer

    from modeling_realm import RealmConfig, RealmRetriever
    from modeling_realm.models.loading import demo_model_path, load_retriever

    tokenizer = AutoTokenizer.from_pretrained(demo_model_path())
    if not quick:
        return load_retriever(None).eval(), tokenizer
    torch.manual_seed(0)
    config = RealmConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, retriever_proj_size=128)
    return RealmRetriever(config).eval(), tokenizer


def make_blocks(num_blocks: int):
    import datasets

    texts = block_texts(0, num_blocks, seed=0)
    return datasets.Dataset.from_dict({"title": [f"Document {i // 4}" for i in range(num_blocks)], "text": texts})


def chunk_size(num_blocks: int) -> int:
    """Eight chunks (at most 8192 blocks each), so that two processes share the work evenly."""
    return min(8192, max(BATCH_SIZE, num_blocks // 8))


def pretokenised_batches(blocks, tokenizer, rank: int = 0, world: int = 1):
    """The batches `encode_blocks` forms (per chunk, longest first), tokenised now; this process's share only."""
    from tokenization.block_inputs import block_inputs

    batches, size = [], chunk_size(len(blocks))
    for chunk, start in enumerate(range(0, len(blocks), size)):
        if chunk % world != rank:
            continue
        rows = blocks[start:start + size]
        titles, texts = rows["title"], rows["text"]
        order = np.argsort([-(len(a) + len(b)) for a, b in zip(titles, texts, strict=True)], kind="stable")
        for first in range(0, len(order), BATCH_SIZE):
            batch = order[first:first + BATCH_SIZE]
            batches.append(block_inputs(tokenizer, [titles[i] for i in batch], [texts[i] for i in batch],
                                        MAX_LENGTH))
    return batches


@torch.no_grad()
def raw_forward_seconds(model, batches) -> float:
    from index_builder.index.fingerprint import block_embedder_of

    embedder = block_embedder_of(model).eval()  # the tower encode_blocks uses
    embedder(**batches[0], return_dict=True)  # warm-up
    start = time.perf_counter()
    for inputs in batches:
        # [batch, retriever_proj_size]
        projected = embedder(**inputs, return_dict=True).projected_score
    assert projected.shape[-1] == model.config.retriever_proj_size
    return time.perf_counter() - start


def build_seconds(blocks, model, tokenizer, output_dir: Path, accelerator=None) -> float:
    from index_builder import build_index

    start = time.perf_counter()
    build_index(blocks, model, tokenizer, output_dir, factory="Flat", batch_size=BATCH_SIZE, max_length=MAX_LENGTH,
                chunk_size=chunk_size(len(blocks)), accelerator=accelerator, overwrite=True, progress=False)
    return time.perf_counter() - start


def measure(args, accelerator=None) -> dict:
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    model, tokenizer = load_model(args.quick)
    blocks = make_blocks(args.num_blocks)
    batches = pretokenised_batches(blocks, tokenizer, rank, world)
    if accelerator:
        accelerator.wait_for_everyone()
    start = time.perf_counter()
    raw_forward_seconds(model, batches)
    if accelerator:
        accelerator.wait_for_everyone()
    raw = time.perf_counter() - start
    build = build_seconds(blocks, model, tokenizer, Path(args.output_dir), accelerator)
    return {"processes": world, "threads": torch.get_num_threads(), "raw_s": raw, "build_s": build,
            "num_blocks": args.num_blocks}


def row_of(result: dict) -> list:
    n = result["num_blocks"]
    return [result["processes"], result["threads"], n / result["raw_s"], n / result["build_s"],
            100.0 * (result["build_s"] / result["raw_s"] - 1.0), result["build_s"], result["raw_s"]]


def run_two_processes(args, scratch: Path) -> dict:
    result_path = scratch / "two.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).resolve()), "--worker", "--num-blocks", str(args.num_blocks),
               "--output-dir", str(scratch / "index-2"), "--result", str(result_path)]
    if args.quick:
        command.append("--quick")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"The two-process run failed:\n{completed.stderr[-3000:]}")
    return json.loads(result_path.read_text())


def worker(args) -> None:
    from accelerate import Accelerator

    import index_builder  # noqa: F401  (transformers before the group starts: see index_builder/index/sharded.py)

    accelerator = Accelerator(cpu=True)
    result = measure(args, accelerator)
    if accelerator.is_main_process:
        Path(args.result).write_text(json.dumps(result) + "\n")
    accelerator.end_training()  # ends the process group while the interpreter is alive


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="tiny random tower, 512 blocks (smoke test)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and args.num_blocks == 2048:
        args.num_blocks = 512
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="encoding-", dir=args.work_dir))
    model_name = "tiny random tower (hidden 32, 2 layers)" if args.quick else "all-MiniLM-L6-v2 (6 layers, hidden 384)"
    print(f"# encoding: {args.num_blocks:,} blocks of ~1.2 KB, max_length {MAX_LENGTH}, batch {BATCH_SIZE}, "
          f"{model_name}; {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    results = []
    try:
        if 1 in args.processes:
            args.output_dir = str(scratch / "index-1")
            results.append(measure(args))
        if 2 in args.processes:
            results.append(run_two_processes(args, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(markdown_table(HEADERS, [row_of(r) for r in results]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
