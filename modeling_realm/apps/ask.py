"""`realm-qa`: ask questions of a REALM open-QA model and a block index from the command line."""

import argparse
import json
import logging
import sys

from modeling_realm.apps.arguments import positive_int
from modeling_realm.models.precision import PRECISIONS

DESCRIPTION = """\
Answer questions with a REALM open-QA model over a block index, and show the evidence each answer came from.

examples:
  realm-qa                                         # the offline demo: built on first use, then cached
  realm-qa "where was Zorvath Kell born?"          # ask the demo your own question
  realm-qa "who wrote hamlet?" --model google/realm-orqa-nq-openqa --allow-pickle
  realm-qa "..." --model my-finetuned-model --index my-index --top-k 3 --json
  realm-qa "..." --precision bfloat16              # ~3x faster towers on CPUs with AVX-512 BF16 (int8: older CPUs)

Without --model, the demo model is used: a small REALM retriever and reader initialised from all-MiniLM-L6-v2 and
trained for a few minutes on a synthetic corpus of invented people (so answers can only come from retrieval). Its
first run builds it (a few minutes on 2 CPU cores) and caches it; later runs start in seconds. With --model but
no --index, the model must be one of google's open-QA checkpoints, whose block embeddings and texts are converted
into an index (their texts are a pickled array: pass --allow-pickle if you trust the source).
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="realm-qa", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("questions", nargs="*", help="questions to answer (default: a few about the demo corpus)")
    parser.add_argument("--model", default=None, help="RealmForOpenQA checkpoint (Hub id or directory)")
    parser.add_argument("--index", default=None, help="BlockIndex directory or Hub dataset id")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow reading google's pickled block_records.npy when converting a checkpoint")
    parser.add_argument("--top-k", type=positive_int, default=1, help="answers per question (default 1)")
    parser.add_argument("--retrieval", choices=["dense", "lexical", "hybrid"], default=None,
                        help="how blocks are found: the question tower (dense), BM25 (lexical) or both fused (hybrid); "
                             "default: hybrid when the index has a lexical part, else dense")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="how the question tower and reader run: bfloat16 (fastest on CPUs with AVX-512 BF16 and "
                             "on GPUs), int8 (CPU only, for CPUs without bfloat16 arithmetic) or float32 (exact); "
                             "default: the precision saved with the model")
    parser.add_argument("--rebuild-demo", action="store_true", help="rebuild the cached demo model and index")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    return parser.parse_args(argv)


def load(args):
    """(model with index and tokenizer attached, default questions)."""
    from index_builder.index.block_index import BlockIndex
    from modeling_realm.apps.demo import demo_questions, load_demo
    from modeling_realm.openqa import RealmForOpenQA

    if args.model is None:
        model = load_demo(rebuild=args.rebuild_demo)
        defaults = demo_questions(model)
    else:
        if args.index is not None:
            index = BlockIndex.from_pretrained(args.index)
        else:
            index = BlockIndex.from_realm_checkpoint(args.model, allow_pickle=args.allow_pickle)
        model, defaults = RealmForOpenQA.from_pretrained(args.model, index=index).eval(), []
    if args.precision is not None:
        model.set_precision(args.precision)
    return model, defaults


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model, defaults = load(args)
    questions = args.questions or defaults
    if not questions:
        raise SystemExit("Pass at least one question, e.g. realm-qa \"who wrote hamlet?\" --model ...")
    results = model.answer(questions, top_k=args.top_k, batch_size=args.batch_size, retrieval=args.retrieval)
    for question, answers in zip(questions, results, strict=True):
        answers = answers if isinstance(answers, list) else [answers]
        sys.stdout.write(format_answers(question, answers, as_json=args.json))
    return 0


def format_answers(question: str, answers: list[dict], as_json: bool = False) -> str:
    if as_json:
        fields = ("answer", "score", "start", "end", "block_id", "doc_id", "title", "text")
        return json.dumps({"question": question, "answers": [{k: a[k] for k in fields} for a in answers]}) + "\n"
    lines = [f"Q: {question}"]
    for rank, answer in enumerate(answers, 1):
        text = answer["text"]
        evidence = text[:answer["start"]] + "[" + text[answer["start"]:answer["end"]] + "]" + text[answer["end"]:]
        title = f"{answer['title']}: " if answer["title"] else ""
        lines.append(f"  {rank}. {answer['answer']!r}  (score {answer['score']:.3f}, block {answer['block_id']})")
        lines.append(f"     evidence: {title}{_shorten(evidence, answer['start'])}")
    return "\n".join(lines) + "\n\n"


def _shorten(evidence: str, focus: int, width: int = 240) -> str:
    if len(evidence) <= width:
        return evidence
    start = max(0, min(focus - width // 3, len(evidence) - width))
    return ("..." if start else "") + evidence[start:start + width] + ("..." if start + width < len(evidence) else "")


if __name__ == "__main__":
    raise SystemExit(main())
