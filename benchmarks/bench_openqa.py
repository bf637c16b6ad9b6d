"""End-to-end open QA: seconds per question at batch 1 and questions per second at batch 32, against 4.57.6.

Both sides load the same `RealmForOpenQA` checkpoint (BERT-base-shaped question tower and reader, random weights:
timing does not depend on their values) whose `block_emb` holds the synthetic corpus's 128-d embeddings, and read the
same ~1.2 KB block texts:

- this package: `RealmForOpenQA.from_pretrained(checkpoint, index=BlockIndex)` and `answer(questions,
  batch_size=...)`, over an exact (Flat) index, over the compressed IVF-PQ index of bench_search, and over that
  index with the package's precision switch, `from_pretrained(..., precision="bfloat16" | "int8")` (question tower
  and reader; `models/precision.py`);
- 4.57.6: `RealmForOpenQA.from_pretrained(checkpoint, retriever=RealmRetriever(block_records, tokenizer))`, one
  question per forward (its only batch size), brute force over `block_emb`, texts from an in-RAM object array.

Each side runs in a fresh subprocess (peak RSS from the kernel). Answers are compared question by question, after
removing spaces and wordpiece marks (4.x decodes token ids; this package returns the substring of the block).

    python benchmarks/bench_openqa.py                    # 1,000,000 blocks, BERT-base towers (README table)
    python benchmarks/bench_openqa.py --quick            # 20,000 blocks, tiny towers (smoke test)
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import run_child  # noqa: E402
from bench_search import default_nlist  # noqa: E402
from synthetic_embeddings import (  # noqa: E402
    DEFAULT_WORK_DIR,
    block_texts,
    ensure_corpus,
    markdown_table,
    memory_status,
    reference_python,
)

TOWERS = {  # RealmConfig sizes of the question tower and reader
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}
HEADERS = ["side", "index", "s/question, batch 1", "questions/s, batch B", "x 4.57.6 (batch 1)",
           "x 4.57.6 (throughput)", "peak RSS MB", "answers = 4.57.6"]


# ------------------------------------------------------------------------------------------------ inputs
def make_questions(count: int, seed: int = 0) -> list[str]:
    """`count` questions of 8-14 pseudo-words from the block texts' vocabulary (so they share wordpieces)."""
    rng = np.random.default_rng([seed, 7])
    words = " ".join(block_texts(0, 64, seed)).split()
    return [" ".join(rng.choice(words, size=rng.integers(8, 15))) + " ?" for _ in range(count)]


def ensure_checkpoint(work_dir: Path, embeddings_path: Path, towers: str) -> Path:
    """Save (or reuse) a random-weight RealmForOpenQA whose `block_emb` is the corpus's embeddings, with a
    bert-base-uncased WordPiece tokenizer (the demo model's vocabulary)."""
    embeddings = np.load(embeddings_path, mmap_mode="r")
    directory = work_dir / f"openqa-{towers}-{len(embeddings)}"
    if (directory / "config.json").exists() and (directory / "vocab.txt").exists():
        return directory
    import torch

    from modeling_realm import RealmConfig, RealmForOpenQA
    from modeling_realm.models.loading import demo_model_path
    from tokenization import RealmTokenizerFast

    vocab = Path(demo_model_path()) / "vocab.txt"
    tokenizer = RealmTokenizerFast(vocab_file=str(vocab))
    config = RealmConfig(vocab_size=len(tokenizer), num_block_records=len(embeddings), retriever_proj_size=128,
                         **TOWERS[towers])
    torch.manual_seed(0)
    model = RealmForOpenQA(config)
    with torch.no_grad():
        model.block_emb.copy_(torch.from_numpy(np.array(embeddings)))  # a writable copy
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=work_dir))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.copyfile(vocab, staging / "vocab.txt")  # what 4.x's RealmTokenizer reads
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)
    return directory


def ensure_index(work_dir: Path, paths: dict, factory: str) -> Path:
    """Build (or reuse) the BlockIndex of the corpus with this FAISS factory."""
    import datasets

    from index_builder import BlockIndex

    embeddings = np.load(paths["embeddings"], mmap_mode="r")
    directory = work_dir / f"index-{len(embeddings)}-{factory.replace(',', '_')}"
    if (directory / "manifest.json").exists():
        return directory
    blocks = datasets.Dataset.from_file(str(paths["texts"]), in_memory=False)
    BlockIndex.build(blocks, embeddings, directory, factory=factory, overwrite=True, progress=False)
    return directory


# ------------------------------------------------------------------------------------------------ measured sides
def child_ours(args) -> dict:
    """This package, in its own process: batch-1 latency, batch-N throughput, answers."""
    from index_builder import BlockIndex
    from modeling_realm import RealmForOpenQA

    questions = json.loads(Path(args.questions_file).read_text())
    index = BlockIndex.load_from_disk(args.index_dir)
    if args.search_params:
        index.set_search_params(**json.loads(args.search_params))
    model = RealmForOpenQA.from_pretrained(args.checkpoint, index=index, precision=args.precision)
    times, answers = [], []
    model.answer(questions[:1], batch_size=1)  # warm-up: first-call allocations, FAISS threads
    for question in questions[:args.batch1_questions]:
        start = time.perf_counter()
        answers.append(model.answer([question], batch_size=1)[0]["answer"])
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.answer(questions, batch_size=args.batch_size)
    throughput = len(questions) / (time.perf_counter() - start)
    return {"seconds_per_question": float(np.median(times)), "questions_per_second": throughput,
            "answers": answers, "peak_rss_bytes": memory_status()["peak_rss_bytes"]}


def measure_ours(args, checkpoint: Path, index_dir: Path, questions_file: Path, search_params=None,
                 precision: str = "float32") -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--checkpoint", str(checkpoint),
               "--index-dir", str(index_dir), "--questions-file", str(questions_file),
               "--batch1-questions", str(args.batch1_questions), "--batch-size", str(args.batch_size),
               "--precision", precision]
    if search_params:
        command += ["--search-params", json.dumps(search_params)]
    return run_child(command)


def measure_reference(args, checkpoint: Path, questions_file: Path) -> tuple[dict | None, str]:
    """4.57.6's figures, or None and why they are missing."""
    python, reason = reference_python()
    if python is None:
        return None, reason
    script = str(Path(__file__).resolve().parent / "reference_realm4.py")
    return run_child([str(python), script, "openqa", "--checkpoint", str(checkpoint), "--num-blocks",
                      str(args.num_blocks), "--seed", "0", "--queries", str(questions_file),
                      "--count", str(args.batch1_questions)]), ""


# ------------------------------------------------------------------------------------------------ report
def normalised(answer: str) -> str:
    return answer.replace("##", "").replace(" ", "").lower()


def rows_of(ours: dict, reference: dict | None) -> list[list]:
    rows = []
    if reference is not None:
        ref_qps = 1.0 / reference["seconds_per_question"]
        rows.append(["transformers 4.57.6", "block_emb, brute force", reference["seconds_per_question"],
                     "n/a (batch 1 only)", 1.0, 1.0, reference["peak_rss_mb"], "-"])
    for name, result in ours.items():
        row = ["this package", name, result["seconds_per_question"], result["questions_per_second"]]
        if reference is None:
            row += ["n/a", "n/a", result["peak_rss_mb"], "n/a"]
        else:
            same = sum(normalised(a) == normalised(b) for a, b in zip(result["answers"], reference["answers"],
                                                                        strict=False))
            row += [reference["seconds_per_question"] / result["seconds_per_question"],
                    result["questions_per_second"] / ref_qps, result["peak_rss_mb"],
                    f"{same}/{len(reference['answers'])}"]
        rows.append(row)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-blocks", type=int, default=1_000_000)
    parser.add_argument("--towers", choices=sorted(TOWERS), default="bert-base")
    parser.add_argument("--batch1-questions", type=int, default=6, help="questions timed one at a time per side")
    parser.add_argument("--questions", type=int, default=32, help="questions answered at --batch-size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compressed", default=None, help="compressed FAISS factory (default IVF{nlist},PQ32)")
    parser.add_argument("--quick", action="store_true", help="20,000 blocks, tiny towers (smoke test)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    # internal: the measured subprocess of this package
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    for hidden in ("--checkpoint", "--index-dir", "--questions-file", "--search-params"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_blocks, args.towers, args.batch1_questions, args.questions = 20_000, "tiny", 3, 8
        args.batch_size = min(args.batch_size, 8)
    args.compressed = args.compressed or f"IVF{default_nlist(args.num_blocks)},PQ32"
    if min(args.batch1_questions, args.questions, args.batch_size) < 1:
        parser.error("--batch1-questions, --questions and --batch-size must be at least 1.")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_ours(args)))
        return None
    work_dir = Path(args.work_dir)
    paths = ensure_corpus(work_dir, args.num_blocks, texts=True)
    print(f"# open QA end to end: {args.num_blocks:,} blocks (~1.2 KB texts), {args.towers} towers, "
          f"{args.batch1_questions} questions at batch 1, {args.questions} at batch {args.batch_size}; "
          f"{os.cpu_count()} CPUs", flush=True)
    checkpoint = ensure_checkpoint(work_dir, paths["embeddings"], args.towers)
    scratch = Path(tempfile.mkdtemp(prefix="openqa-", dir=work_dir))
    try:
        questions_file = scratch / "questions.json"
        questions_file.write_text(json.dumps(make_questions(args.questions)))
        exact, compressed = ensure_index(work_dir, paths, "Flat"), ensure_index(work_dir, paths, args.compressed)
        settings = {"nprobe": 16, "rerank": 10}
        ours = {"Flat (exact)": measure_ours(args, checkpoint, exact, questions_file),
                f"{args.compressed}, nprobe 16, rerank 10": measure_ours(
                    args, checkpoint, compressed, questions_file, settings),
                f"{args.compressed}, nprobe 16, rerank 10, precision bfloat16": measure_ours(
                    args, checkpoint, compressed, questions_file, settings, precision="bfloat16"),
                f"{args.compressed}, nprobe 16, rerank 10, precision int8": measure_ours(
                    args, checkpoint, compressed, questions_file, settings, precision="int8")}
        reference, note = measure_reference(args, checkpoint, questions_file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = rows_of(ours, reference)
    print(markdown_table([h.replace("batch B", f"batch {args.batch_size}") for h in HEADERS], rows))
    if note:
        print(note)
    summary = {"num_blocks": args.num_blocks, "towers": args.towers, "rows": rows, "note": note}
    if args.json:
        Path(args.json).write_text(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
