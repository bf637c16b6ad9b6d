"""Reduced-precision encoding: float32 against bfloat16 blocks/s, and how far the bfloat16 index is from float32.

Three encodings of the same blocks with `encode_blocks` (the function `build_index` runs: chunk files,
checksums): float32, `dtype="bfloat16"` (a bfloat16 copy of the block tower) and `mixed_precision="bf16"`
(autocast over the float32 tower), in rounds of alternating order within one process, so that the shared
machine's load falls on all three; the ratios are of the median seconds. Agreement with float32: the cosines
between each block's two embeddings, and top-5 retrieval agreement of a Flat index of the reduced embeddings
against one of the float32 embeddings (mean over queries of |top5_float32 & top5_reduced| / 5). The queries are
SQuAD v1.1 dev questions through the float32 query tower, with gold recall@5 of each index, when the SQuAD
passages are present (the corpus is then the passages' first blocks); otherwise the float32 embeddings of
held-out blocks. The last column is the agreement the manifest would record (`index_builder/encoding/
agreement.py`: the blocks' own float32 embeddings as queries over a sample of at most 512 blocks).

    python benchmarks/bench_encoding_dtype.py                  # all-MiniLM-L6-v2 block tower, 512 blocks (~3 min)
    python benchmarks/bench_encoding_dtype.py --quick          # tiny random tower, 128 synthetic blocks
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_encoding import load_model, make_blocks  # noqa: E402
from synthetic_embeddings import DEFAULT_WORK_DIR, markdown_table  # noqa: E402

VARIANTS = {"float32": {}, "bfloat16": {"dtype": "bfloat16"}, "autocast bf16": {"mixed_precision": "bf16"}}
MAX_LENGTH = 288
TOP_K = 5
HEADERS = ["encoding", "blocks/s", "x float32", "cosine mean", "cosine min", "top-5 agreement", "gold recall@5",
           "sample top-5 agreement"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4, help="timed encodings per dtype, alternating")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny random tower, 128 synthetic blocks, 1 round")
    parser.add_argument("--data-dir", default=None, help="SQuAD directory (default: squad_retrieval.py's)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_blocks, args.rounds = min(args.num_blocks, 128), 1
    return args


def squad_data(args, tokenizer):
    """The first `num_blocks` blocks of the SQuAD passages and the questions about them, or None (with the reason)
    when the passages are absent or --quick is given."""
    if args.quick:
        return None, "--quick: synthetic blocks"
    from squad_retrieval import SQUAD

    from modeling_realm.openqa import load_qa_file
    from tokenization import load_corpus, split_into_blocks

    data = Path(args.data_dir or SQUAD)
    if not (data / "squad-dev-v1.1.passages.jsonl").exists():
        return None, f"no SQuAD passages under {data} (pass --data-dir): held-out blocks are the queries"
    corpus = load_corpus(data / "squad-dev-v1.1.passages.jsonl", doc_id_field="id")
    blocks = split_into_blocks(corpus, tokenizer, max_block_length=MAX_LENGTH)
    blocks = blocks.select(range(min(args.num_blocks, len(blocks))))
    kept = set(blocks["doc_id"])
    records = [r for r in load_qa_file(data / "squad-dev-v1.1.qa.jsonl") if str(r["gold_doc_id"]) in kept]
    return (blocks, records), f"SQuAD v1.1 dev: {len(blocks)} blocks, {len(records)} questions"


@torch.no_grad()
def question_queries(model, tokenizer, records) -> np.ndarray:
    chunks = []
    for start in range(0, len(records), 64):
        inputs = tokenizer([r["question"] for r in records[start:start + 64]], padding=True, truncation=True,
                           max_length=64, return_tensors="pt")
        # [batch, proj]
        chunks.append(model.embed_queries(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]))
    return torch.cat(chunks).numpy()


def timed_encodings(blocks, model, tokenizer, args, scratch: Path) -> tuple[dict, dict]:
    """Median seconds per variant over rounds in alternating order, and each variant's embeddings `[n, d]`."""
    from index_builder.encoding.encode import encode_blocks

    names = list(VARIANTS)
    seconds, vectors = {name: [] for name in names}, {}
    for round_ in range(args.rounds):
        for i, name in enumerate(names if round_ % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            embeddings = encode_blocks(blocks, model, tokenizer, scratch / f"{round_}-{i}", batch_size=args.batch_size,
                                       max_length=MAX_LENGTH, chunk_size=256, progress=False, **VARIANTS[name])
            seconds[name].append(time.perf_counter() - start)
            vectors[name] = embeddings[0:len(blocks)]
            print(f"# round {round_}: {name} {len(blocks) / seconds[name][-1]:.1f} blocks/s", flush=True)
    return {name: statistics.median(s) for name, s in seconds.items()}, vectors


def top_k(embeddings: np.ndarray, queries: np.ndarray, texts) -> np.ndarray:
    """`[q, k]` block ids of a Flat BlockIndex of `embeddings`."""
    from index_builder import BlockIndex

    index = BlockIndex.from_arrays(embeddings, texts=texts, factory="Flat", progress=False)
    return index.search(queries, k=TOP_K)[1]


def retrieval_rows(vectors: dict, queries: np.ndarray, texts, gold: list | None, doc_ids) -> dict:
    """Per variant: top-5 agreement with float32, and gold recall@5 when the queries are questions."""
    ids = {dtype: top_k(vectors[dtype], queries, texts) for dtype in VARIANTS}
    rows = {}
    for dtype in VARIANTS:
        shared = [len(np.intersect1d(a, b)) / TOP_K for a, b in zip(ids["float32"], ids[dtype], strict=True)]
        recall = None
        if gold is not None:
            recall = float(np.mean([g in {doc_ids[i] for i in row} for g, row in zip(gold, ids[dtype], strict=True)]))
        rows[dtype] = {"top5_agreement": float(np.mean(shared)), "gold_recall_at_5": recall}
    return rows


def measure(args, scratch: Path) -> dict:
    from index_builder.encoding.agreement import agreement, sample_rows

    model, tokenizer = load_model(args.quick)
    squad, source = squad_data(args, tokenizer)
    if squad is not None:
        blocks, records = squad
        queries, gold = question_queries(model, tokenizer, records), [str(r["gold_doc_id"]) for r in records]
    else:
        every = make_blocks(args.num_blocks + args.num_blocks // 4)
        blocks, held_out = every.select(range(args.num_blocks)), every.select(range(args.num_blocks, len(every)))
        from index_builder.encoding.encode import embed_in_memory

        queries, gold = embed_in_memory(held_out, model, tokenizer, args.batch_size, MAX_LENGTH), None
    print(f"# queries: {source}", flush=True)
    seconds, vectors = timed_encodings(blocks, model, tokenizer, args, scratch)
    doc_ids = blocks["doc_id"] if "doc_id" in blocks.column_names else None
    retrieval = retrieval_rows(vectors, queries, blocks["text"], gold, doc_ids)
    sample = sample_rows(len(blocks))
    results = {"source": source, "num_blocks": len(blocks), "num_queries": len(queries), "rows": {}}
    for dtype in VARIANTS:
        whole = agreement(vectors["float32"], vectors[dtype])
        sampled = agreement(vectors["float32"][sample], vectors[dtype][sample])
        results["rows"][dtype] = {"seconds": seconds[dtype], "blocks_per_s": len(blocks) / seconds[dtype],
                                  "ratio": seconds["float32"] / seconds[dtype], "cosine_mean": whole["cosine_mean"],
                                  "cosine_min": whole["cosine_min"], **retrieval[dtype],
                                  "sample_top5_agreement": sampled["top5_agreement"]}
    return results


def table(results: dict) -> str:
    rows = []
    for dtype, row in results["rows"].items():
        recall = "-" if row["gold_recall_at_5"] is None else row["gold_recall_at_5"]
        rows.append([dtype, row["blocks_per_s"], row["ratio"], f"{row['cosine_mean']:.6f}",
                     f"{row['cosine_min']:.6f}", row["top5_agreement"], recall, row["sample_top5_agreement"]])
    return markdown_table(HEADERS, rows)


def main(argv=None):
    args = parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="encoding-dtype-", dir=args.work_dir))
    model_name = "tiny random tower (hidden 32, 2 layers)" if args.quick else "all-MiniLM-L6-v2 (6 layers, hidden 384)"
    from index_builder.encoding.precision import fast_bfloat16

    print(f"# encoding dtype: {model_name}, max_length {MAX_LENGTH}, batch {args.batch_size}, {args.rounds} "
          f"round(s); {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU "
          f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16: {fast_bfloat16()}", flush=True)
    try:
        results = measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# {results['num_blocks']:,} blocks, {results['num_queries']:,} queries ({results['source']})")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
