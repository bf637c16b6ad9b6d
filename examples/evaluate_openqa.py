"""Evaluate a REALM open-QA model and its index on a QA file, as the papers did.

    python examples/evaluate_openqa.py --model out/best --index my-index \
        --qa-file NQ-open.dev.jsonl --output-dir eval-nq
    python examples/evaluate_openqa.py --model out/best --index my-index \
        --qa-file CuratedTrec-test.txt --match regex --output-dir eval-trec
    python examples/evaluate_openqa.py --demo --qa-file held_out.jsonl --output-dir eval-demo

Exact match after SQuAD normalisation (or regular-expression match for CuratedTREC, `--match regex`), answer
recall@k of the retriever (is an answer string in one of the top k blocks) and, when the QA file names a gold
passage (the SQuAD files do), gold-block recall@k. Writes `predictions.jsonl` (one line per question) and
`summary.json` to --output-dir and prints a table. `--demo` evaluates the offline demo model of `realm-qa`.
"""

import argparse
import json
import logging
import os
from pathlib import Path

from index_builder import BlockIndex
from modeling_realm import RealmForOpenQA, evaluate_openqa
from modeling_realm.apps import load_demo
from modeling_realm.openqa import load_qa_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="RealmForOpenQA checkpoint (directory or Hub id)")
    parser.add_argument("--index", help="BlockIndex directory or Hub dataset id")
    parser.add_argument("--demo", action="store_true", help="evaluate the offline demo model and index")
    parser.add_argument("--qa-file", required=True, help="jsonl ({'question', 'answer': [...]}) or SQuAD json")
    parser.add_argument("--question-field", default="question")
    parser.add_argument("--answer-field", default="answer")
    parser.add_argument("--match", choices=["string", "regex"], default="string")
    parser.add_argument("--ks", default="1,5,20,100", help="recall cut-offs (default 1,5,20,100)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--retrieval", choices=["dense", "lexical", "hybrid", "each"], default="each",
                        help="retrieval mode to evaluate; each (default): every mode the index serves (dense, and "
                             "lexical and hybrid when it has a lexical part); summary.json's top level and "
                             "predictions.jsonl are the index's default mode")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    if not args.demo and not (args.model and args.index):
        parser.error("pass --model and --index, or --demo")
    return args


def load_model(args):
    if args.demo:
        return load_demo()
    model = RealmForOpenQA.from_pretrained(args.model, index=BlockIndex.from_pretrained(args.index)).eval()
    model._answer_tokenizer()
    return model


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def retrieval_modes(index, requested: str) -> list[str]:
    """The modes to evaluate, the index's default last."""
    if requested != "each":
        return [requested]
    return ["dense", "lexical", "hybrid"] if getattr(index, "has_lexical", False) else ["dense"]


def table(summary: dict) -> str:
    by_mode = summary.get("by_retrieval") or {summary["retrieval"]: summary}
    names = [name for name, value in next(iter(by_mode.values())).items() if isinstance(value, (int, float))]
    header = f"{'metric':<22}" + "".join(f" {mode:>9}" for mode in by_mode)
    rows = [f"{name:<22}" + "".join(_cell(result[name]) for result in by_mode.values()) for name in names]
    return "\n".join([header, "-" * len(header), *rows])


def _cell(value) -> str:
    return f" {value:9.2f}" if isinstance(value, float) else f" {value:>9}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    records = load_qa_file(args.qa_file, question_field=args.question_field, answer_field=args.answer_field,
                           match=args.match)[:args.limit]
    model = load_model(args)
    ks = tuple(int(k) for k in args.ks.split(","))
    modes = retrieval_modes(model.index, args.retrieval)
    by_mode = {mode: evaluate_openqa(model, model.tokenizer, records, match=args.match, ks=ks,
                                     batch_size=args.batch_size, retrieval=mode) for mode in modes}
    main_mode = modes[-1]  # hybrid when the index has a lexical part (its default), else the one asked for
    summary, predictions = by_mode[main_mode]
    summary = {"qa_file": str(args.qa_file), "match": args.match, "retrieval": main_mode, **summary}
    if len(modes) > 1:
        summary["by_retrieval"] = {mode: result[0] for mode, result in by_mode.items()}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(output / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
    write_atomically(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    return summary


if __name__ == "__main__":
    main()
