"""Hybrid retrieval on the SQuAD v1.1 dev passages: BM25, dense and their fusions, through one BlockIndex.

    python benchmarks/squad_hybrid.py --output-dir /tmp/squad-hybrid            # README table (~10 min, 2 cores)
    python benchmarks/squad_hybrid.py --output-dir /tmp/squad-hybrid --quick    # smoke test
    python benchmarks/squad_hybrid.py --output-dir /tmp/squad-hybrid --only-init-rows  # init_from_bert starts (~20 min)

Corpus and questions as in squad_retrieval.py: the 2,067 passages of ../shared/data/squad cut into blocks of at most
288 wordpieces, and all 10,570 dev questions, each naming its gold passage. One index per dense retriever is built
with `build_index(..., lexical="bm25")`, so the lexical part is the package's own (bm25s tokenizer, English stop
words, k1=1.5, b=0.75). Dense retrievers:

1. `RealmRetriever` from all-MiniLM-L6-v2 at initialisation ([CLS] pooling, fresh 128-d projection, seed 0): the
   package's best dense retriever on this corpus (benchmarks/README.md section 5: ICT and REALM at CPU budgets score
   lower);
2. all-MiniLM-L6-v2 as the sentence encoder it was trained to be (mean pooling, 384-d, title + text cut to 256
   tokens), its embeddings given to `BlockIndex.from_arrays`: what the index does with a strong dense side.

With `--init-rows` (or `--only-init-rows`, without the two above), three more `RealmRetriever` starts of
`init_from_bert`: mean pooling with a random 128-d, a principal-component 128-d (`projection="pca"` over
`--pca-sample` blocks) and an identity 384-d projection, each searched dense and with the default hybrid.

Every row searches k=100 once per question (hybrid: each side 100 deep) and reports gold recall@1/5/20/100 and the
seconds its searches took. Prints a table and one JSON summary (OUTPUT_DIR/summary.json).
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from squad_retrieval import SQUAD, load_data  # noqa: E402

from index_builder import BlockIndex, build_index  # noqa: E402
from modeling_realm import RealmRetriever  # noqa: E402
from modeling_realm.models.bert_init import init_from_bert  # noqa: E402
from modeling_realm.models.loading import demo_model_path  # noqa: E402
from modeling_realm.openqa import gold_block_recall  # noqa: E402
from tokenization import split_into_blocks  # noqa: E402

KS = (1, 5, 20, 100)
# (row label, mode, fusion, weight of the dense side)
SEARCHES = [("dense", "dense", None, None), ("BM25 (lexical part)", "lexical", None, None),
            ("hybrid interpolation, weight 0.5 (default)", "hybrid", "interpolation", 0.5),
            ("hybrid interpolation, weight 0.3", "hybrid", "interpolation", 0.3),
            ("hybrid rrf, weight 0.5", "hybrid", "rrf", 0.5),
            ("hybrid rrf, weight 0.3", "hybrid", "rrf", 0.3)]
logger = logging.getLogger("squad_hybrid")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=str(SQUAD))
    parser.add_argument("--questions", type=int, default=None, help="score only the first N questions (default all)")
    parser.add_argument("--quick", action="store_true", help="30 passages and their questions: a smoke test")
    parser.add_argument("--init-rows", action="store_true",
                        help="also the retriever starts of init_from_bert: mean pooling with a random, principal-"
                             "component (pca) or identity projection (dense and default hybrid rows)")
    parser.add_argument("--only-init-rows", action="store_true",
                        help="only the --init-rows retrievers (skip the [CLS] RealmRetriever and the sentence side)")
    parser.add_argument("--pca-sample", type=int, default=1024, help="blocks embedded for projection='pca'")
    return parser.parse_args(argv)


# --init-rows: (row prefix, index directory, init_from_bert arguments) of the retriever starts of issue 16, item 1
INIT_ROWS = [
    ("RealmRetriever mean, random 128-d", "mean-random", dict(retriever_pooling="mean", retriever_proj_size=128)),
    ("RealmRetriever mean, pca 128-d", "mean-pca", dict(retriever_pooling="mean", retriever_proj_size=128,
                                                        projection="pca")),
    ("RealmRetriever mean, identity 384-d", "mean-identity", dict(retriever_pooling="mean", retriever_proj_size=384,
                                                                  projection="identity")),
]


@torch.no_grad()
def realm_side(tokenizer, blocks, records, output: Path, name="realm-init", pca_sample=1024, **init):
    """(index with a lexical part, question embeddings `[q, proj]`) of the package's RealmRetriever at init
    (default: [CLS] pooling, fresh 128-d projection, seed 0)."""
    torch.manual_seed(0)
    init = {"retriever_pooling": "cls", "retriever_proj_size": 128, **init}
    if init.get("projection") == "pca":
        init.update(blocks=blocks, tokenizer=tokenizer, pca_sample_size=pca_sample)
    retriever = init_from_bert(RealmRetriever, demo_model_path(), **init).eval()
    index = build_index(blocks, retriever, tokenizer, output / f"index-{name}", factory="Flat", overwrite=True,
                        progress=False, lexical="bm25")
    queries = []
    for start in range(0, len(records), 64):
        inputs = tokenizer([r["question"] for r in records[start:start + 64]], padding=True, truncation=True,
                           max_length=64, return_tensors="pt")
        queries.append(retriever.embed_queries(inputs["input_ids"], inputs["attention_mask"],
                                               inputs["token_type_ids"]))
    return index, torch.cat(queries).numpy()


@torch.no_grad()
def mean_pooled(texts: list[str], tokenizer, model, max_length: int, batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings `[n, 384]`: mean of the token states over the attention mask, L2-normalised."""
    out = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
        states = model(**inputs).last_hidden_state  # [b, seq, 384]
        mask = inputs["attention_mask"].unsqueeze(-1).float()  # [b, seq, 1]
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy()


def sentence_side(tokenizer, blocks, records):
    """(index with a lexical part, question embeddings `[q, 384]`) of mean-pooled all-MiniLM-L6-v2."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(demo_model_path()).eval()
    texts = [f"{t} {x}" for t, x in zip(blocks["title"], blocks["text"], strict=True)]
    embeddings = mean_pooled(texts, tokenizer, model, 256)
    index = BlockIndex.from_arrays(embeddings, blocks["text"], titles=blocks["title"], doc_ids=blocks["doc_id"],
                                   progress=False, lexical="bm25")
    return index, mean_pooled([r["question"] for r in records], tokenizer, model, 64)


def recall_rows(index, queries: np.ndarray, records, prefix: str, searches=tuple(SEARCHES)) -> dict:
    """Gold recall@k and search seconds of every search in `searches` over `index`."""
    rows, gold, texts = {}, [r["gold_doc_id"] for r in records], [r["question"] for r in records]
    k = min(max(KS), len(index))
    for label, mode, fusion, weight in searches:
        if mode == "lexical" and prefix != "RealmRetriever":
            continue  # the same BM25 row as under the first retriever
        extra = {} if mode != "hybrid" else {"fusion": fusion, "weight": weight}
        started, found = time.perf_counter(), []
        for start in range(0, len(records), 256):
            _, ids = index.search(queries[start:start + 256], k, query_texts=texts[start:start + 256], mode=mode,
                                  **extra)
            found += [[block["doc_id"] for block in row] for row in index.get_blocks(ids)]
        name = label if mode == "lexical" else f"{prefix}: {label}"
        rows[name] = {**gold_block_recall(found, gold, ks=KS), "seconds": round(time.perf_counter() - started, 1)}
        logger.info("%s: %s", name, rows[name])
    return rows


def table(rows: dict) -> str:
    lines = ["| retrieval | " + " | ".join(f"recall@{k}" for k in KS) + " | search s |",
             "|---|" + "---|" * (len(KS) + 1)]
    for name, recall in rows.items():
        cells = [f"{recall[f'recall@{k}']:.1f}" if f"recall@{k}" in recall else "-" for k in KS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {recall['seconds']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started, output = time.perf_counter(), Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    corpus, records, _ = load_data(args, output)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_path())
    blocks = split_into_blocks(corpus, tokenizer)
    rows = {}
    if not args.only_init_rows:
        index, queries = realm_side(tokenizer, blocks, records, output)
        rows.update(recall_rows(index, queries, records, "RealmRetriever"))
    for prefix, name, init in INIT_ROWS if args.init_rows or args.only_init_rows else ():
        if init.get("projection") == "pca" and min(len(blocks), args.pca_sample) < init["retriever_proj_size"]:
            logger.warning("%s skipped: %d blocks cannot give %d principal directions", prefix, len(blocks),
                           init["retriever_proj_size"])
            continue
        index, queries = realm_side(tokenizer, blocks, records, output, name, args.pca_sample, **init)
        rows.update(recall_rows(index, queries, records, prefix, SEARCHES[:1] + SEARCHES[2:3]))
    if not args.only_init_rows:
        index, queries = sentence_side(tokenizer, blocks, records)
        rows.update(recall_rows(index, queries, records, "mean-pooled MiniLM"))
    summary = {"passages": len(corpus), "blocks": len(blocks), "questions": len(records), "recall": rows,
               "seconds": round(time.perf_counter() - started, 1)}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(rows))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
