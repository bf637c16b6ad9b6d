"""Open-domain QA on the SQuAD v1.1 dev passages with the package's own commands and their defaults, on CPU.

    python benchmarks/squad_openqa.py --output-dir /tmp/squad-openqa              # the README's rows (~45 min)
    python benchmarks/squad_openqa.py --output-dir /tmp/squad-openqa --retriever-steps 0   # ORQA only (~25 min)
    python benchmarks/squad_openqa.py --output-dir /tmp/squad-openqa --quick      # smoke test: 40 passages
    python benchmarks/squad_openqa.py --output-dir /tmp/sq-ict --retriever /tmp/ict/final   # from an ICT retriever

The 2,067 passages of ../shared/data/squad are the corpus. Questions are split by passage: those about passages
with an even id train, those about odd ids are held out (their passages are never seen with a question), and
--eval-questions of them (shuffled, seed 0) are scored. Steps, each one command a user would run:
1. `realm-build-index passages.jsonl --model RETRIEVER` (a BERT such as the default all-MiniLM-L6-v2 keeps
   its own embedding space: mean pooling, identity projection), and the gold-passage recall@k of that untrained
   question tower on the held-out questions (`initial` in the summary);
2. unless --retriever-steps is 0: `examples/pretrain_ict.py --qa-file train.jsonl --index ...` (both towers trained
   on the training questions with their gold passages and hard negatives, the script's defaults but the budget),
   then `realm-build-index --model <its final retriever>` anew, and the held-out recall of the trained retriever
   (`retriever` in the summary); the next steps start from it;
3. `examples/finetune_openqa.py --model RETRIEVER --index ... --train-file train.jsonl` with the script's
   defaults, except the budget given here (--max-train-steps) and --comprehension-steps;
4. `evaluate_openqa` of the trained model on the held-out questions: exact match, F1, answer recall@k and
   gold-passage recall@k of the dense retriever.
Prints one JSON summary (with seconds per step) and writes it, the split files and the predictions to --output-dir.
"""

import argparse
import importlib.util
import json
import random
import time
from pathlib import Path

import torch

from index_builder import BlockIndex
from modeling_realm import RealmForOpenQA, load_retriever
from modeling_realm.apps import build_index
from modeling_realm.models import demo_model_path
from modeling_realm.openqa import evaluate_openqa, gold_block_recall, load_qa_file
from tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad"
PASSAGES, QUESTIONS = "squad-dev-v1.1.passages.jsonl", "squad-dev-v1.1.qa.jsonl"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=str(SQUAD))
    parser.add_argument("--retriever", default=None, help="BERT or RealmRetriever to start from (default: demo MiniLM)")
    parser.add_argument("--retriever-steps", type=int, default=150,
                        help="steps of supervised retriever training before fine-tuning (0: none)")
    parser.add_argument("--max-train-steps", type=int, default=330, help="optimizer steps of fine-tuning")
    parser.add_argument("--comprehension-steps", type=int, default=330, help="of which reading comprehension")
    parser.add_argument("--eval-questions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="40 passages and tiny budgets, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_steps, args.comprehension_steps, args.eval_questions = 2, 1, 20
        args.retriever_steps = min(args.retriever_steps, 2)
    return args


def write_split(data: Path, output: Path, eval_questions: int, quick: bool) -> dict:
    """passages.jsonl, train.jsonl (even passage ids) and held_out.jsonl (odd ids, shuffled, the first N)."""
    passages = [json.loads(line) for line in (data / PASSAGES).read_text().splitlines() if line.strip()]
    records = load_qa_file(data / QUESTIONS)
    if quick:
        passages = passages[:40]
        records = [r for r in records if int(r["gold_doc_id"]) < 40]
    train = [r for r in records if int(r["gold_doc_id"]) % 2 == 0]
    held_out = [r for r in records if int(r["gold_doc_id"]) % 2 == 1]
    random.Random(0).shuffle(held_out)
    held_out = held_out[:eval_questions]
    write_jsonl(output / "passages.jsonl", passages)
    for name, rows in (("train", train), ("held_out", held_out)):
        write_jsonl(output / f"{name}.jsonl", [{"question": r["question"], "answer": r["answers"],
                                               "passage_id": r["gold_doc_id"]} for r in rows])
    return {"passages": len(passages), "train_questions": len(train), "held_out_questions": len(held_out)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@torch.no_grad()
def dense_recall(retriever: str, index, records: list[dict], ks=(1, 5, 20, 100)) -> dict:
    """Gold-passage recall@k of a retriever's question tower against the index its block tower built."""
    model = load_retriever(retriever).eval()
    tokenizer = RealmTokenizerFast.from_pretrained(retriever)
    found = []
    for start in range(0, len(records), 64):
        batch = records[start:start + 64]
        inputs = tokenizer([r["question"] for r in batch], padding=True, truncation=True,
                           max_length=model.config.searcher_seq_len, return_tensors="pt")
        _, block_ids = index.search(model.embed_queries(**inputs), k=min(max(ks), len(index)))
        found += [[block["doc_id"] for block in row] for row in index.get_blocks(block_ids)]
    return gold_block_recall(found, [r["gold_doc_id"] for r in records], ks=ks)


def example_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(output: Path, retriever: str, name: str) -> float:
    """`realm-build-index passages.jsonl --model retriever` into output/name; returns the seconds it took."""
    started = time.perf_counter()
    build_index.main([str(output / "passages.jsonl"), "--model", retriever, "--doc-id-field", "id",
                      "--output", str(output / name), "--overwrite", "--quiet"])
    return round(time.perf_counter() - started, 1)


def train_retriever(args, output: Path, retriever: str) -> tuple[str, float]:
    """pretrain_ict.py --qa-file over the training questions; returns (the trained retriever, seconds)."""
    started = time.perf_counter()
    example_script("pretrain_ict").main(["--model", retriever, "--qa-file", str(output / "train.jsonl"), "--index",
                                         str(output / "index"), "--output-dir", str(output / "retriever"),
                                         "--max-train-steps", str(args.retriever_steps), "--seed", str(args.seed)])
    return str(output / "retriever" / "final"), round(time.perf_counter() - started, 1)


def main(argv=None) -> dict:
    args = parse_args(argv)
    data, output = Path(args.data_dir), Path(args.output_dir)
    if not (data / PASSAGES).exists():
        raise SystemExit(f"No SQuAD passages under {data}; pass --data-dir (see ../shared/data/SOURCES.md).")
    output.mkdir(parents=True, exist_ok=True)
    retriever = args.retriever or demo_model_path()
    summary, seconds = write_split(data, output, args.eval_questions, args.quick), {}
    seconds["index"] = build(output, retriever, "index")
    held_out = load_qa_file(output / "held_out.jsonl")
    summary["initial"] = dense_recall(retriever, BlockIndex.load_from_disk(output / "index"), held_out)
    index = "index"
    if args.retriever_steps:
        retriever, seconds["retriever"] = train_retriever(args, output, retriever)
        seconds["retriever_index"], index = build(output, retriever, "retriever_index"), "retriever_index"
        summary["retriever"] = dense_recall(retriever, BlockIndex.load_from_disk(output / index), held_out)
    started = time.perf_counter()
    example_script("finetune_openqa").main(["--model", retriever, "--index", str(output / index), "--train-file",
                                            str(output / "train.jsonl"), "--output-dir", str(output / "finetuned"),
                                            "--max-train-steps", str(args.max_train_steps), "--comprehension-steps",
                                            str(args.comprehension_steps), "--seed", str(args.seed)])
    seconds["finetune"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    index = BlockIndex.load_from_disk(output / index)
    model = RealmForOpenQA.from_pretrained(output / "finetuned" / "final", index=index)
    tokenizer = RealmTokenizerFast.from_pretrained(output / "finetuned" / "final")
    results, predictions = evaluate_openqa(model, tokenizer, held_out, ks=(1, 5, 20, 100), progress=False)
    seconds["evaluate"] = round(time.perf_counter() - started, 1)
    summary.update(retriever_model=retriever, retriever_steps=args.retriever_steps, max_train_steps=args.max_train_steps,
                   comprehension_steps=args.comprehension_steps, seed=args.seed, held_out=results, seconds=seconds)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_jsonl(output / "predictions.jsonl", predictions)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
