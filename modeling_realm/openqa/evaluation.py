"""Evaluate a `RealmForOpenQA` with its index on QA records: exact match, answer recall@k, gold-block recall@k.

Records are `{"question", "answers": [...]}` with an optional `"gold_doc_id"` (as `tokenization.load_qa_file`
returns them). Exact match follows the papers: SQuAD normalisation, or regular expressions for CuratedTREC.
"""

import torch
from tqdm.auto import tqdm

from modeling_realm.models.pretrained import evaluation_mode
from modeling_realm.openqa.answering import answer_batch, reader_blocks, tokenize_questions
from modeling_realm.openqa.answers import exact_match, f1_score, regex_match
from modeling_realm.openqa.metrics import DEFAULT_KS, gold_block_recall, retrieval_recall
from modeling_realm.retrieval import check_index, check_mode


def evaluate_openqa(model, tokenizer, records: list[dict], match: str = "string", ks=DEFAULT_KS,
                    batch_size: int = 8, progress: bool = True,
                    retrieval: str | None = None) -> tuple[dict, list[dict]]:
    """Answer every record's question and score it, retrieving in `retrieval` mode ("dense", "lexical", "hybrid";
    None: the index's default).

    Returns `(summary, predictions)`: summary has `count`, `exact_match` and (string answers) `f1` in percent,
    `answer_recall@k` and, when every record names a gold document, `gold_recall@k`; predictions has one dict per
    record (question, answers, prediction, score, f1, evidence block and doc id, correct, top retrieved doc ids).
    """
    if not records:
        raise ValueError("No QA records to evaluate; check the QA file.")
    check_index(model.index, model.config.retriever_proj_size)
    check_mode(model.index, retrieval)
    depth = min(max(ks), len(model.index))
    predictions, retrieved_texts, retrieved_docs = [], [], []
    with evaluation_mode(model):
        for start in tqdm(range(0, len(records), batch_size), desc="Evaluating", disable=not progress):
            batch = records[start:start + batch_size]
            questions = [record["question"] for record in batch]
            answers = answer_batch(model, tokenizer, questions, top_k=1, retrieval=retrieval)
            found = _retrieve_deep(model, tokenizer, questions, depth, retrieval)
            for record, best, blocks in zip(batch, answers, found, strict=True):
                retrieved_texts.append([block["text"] for block in blocks])
                retrieved_docs.append([block["doc_id"] for block in blocks])
                predictions.append(_prediction(record, best[0] if best else None, retrieved_docs[-1], match))
    summary = {"count": len(records), "exact_match": 100.0 * sum(p["correct"] for p in predictions) / len(records)}
    if match == "string":
        summary["f1"] = 100.0 * sum(p["f1"] for p in predictions) / len(records)
    recall = retrieval_recall(retrieved_texts, [r["answers"] for r in records], ks=ks, match=match,
                              tokenizer=None, progress=False)
    summary.update({f"answer_{name}": value for name, value in recall.items()})
    if all(record.get("gold_doc_id") is not None for record in records):
        gold = gold_block_recall(retrieved_docs, [r["gold_doc_id"] for r in records], ks=ks)
        summary.update({f"gold_{name}": value for name, value in gold.items()})
    return summary, predictions


@torch.no_grad()
def _retrieve_deep(model, tokenizer, questions: list[str], depth: int, retrieval) -> list[list[dict]]:
    inputs = tokenize_questions(tokenizer, questions, model.config, model.device)
    return reader_blocks(model, model.embed_questions(**inputs), depth, questions, retrieval).blocks


def _prediction(record: dict, best: dict | None, doc_ids: list, match: str) -> dict:
    text = best["answer"] if best else ""
    correct = regex_match(text, record["answers"]) if match == "regex" else exact_match(text, record["answers"])
    row = {"question": record["question"], "answers": record["answers"], "prediction": text,
           **({} if match == "regex" else {"f1": f1_score(text, record["answers"])}),
           "score": best["score"] if best else 0.0, "block_id": best["block_id"] if best else None,
           "doc_id": best["doc_id"] if best else None, "correct": bool(correct), "retrieved_doc_ids": doc_ids[:5]}
    for key in ("id", "gold_doc_id"):
        if key in record:
            row[key] = record[key]
    return row
