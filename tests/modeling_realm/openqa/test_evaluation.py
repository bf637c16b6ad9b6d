"""evaluate_openqa and examples/evaluate_openqa.py: EM and recall agree with a hand computation from answer()."""

import json
import subprocess
import sys

import numpy as np
import pytest

from modeling_realm.openqa import normalize_answer
from modeling_realm.openqa.evaluation import evaluate_openqa
from tests.modeling_realm.openqa.test_answering import fixture_model


def records_for(model, cases):
    """Questions whose answers are what the model predicts for some and something else for others."""
    questions = [case["question"] for case in cases["questions"]]
    predicted = [a["answer"] for a in model.answer(questions)]
    return [{"question": questions[0], "answers": [predicted[0].upper()]},  # right after normalisation
            {"question": questions[1], "answers": ["no such answer"]},
            {"question": questions[2], "answers": ["paris", predicted[2]], "gold_doc_id": "1"}]


def test_summary_matches_a_hand_computation():
    model, tokenizer, cases = fixture_model("tiny")
    records = records_for(model, cases)
    summary, predictions = evaluate_openqa(model, tokenizer, records, ks=(1, 3), progress=False)
    assert [p["correct"] for p in predictions] == [True, False, True]
    assert summary["exact_match"] == pytest.approx(200 / 3)
    embeddings = model.index.get_embeddings(np.arange(len(model.index)))
    for record, prediction in zip(records, predictions, strict=True):
        question = tokenizer([record["question"]], return_tensors="pt")
        scores = embeddings @ model.embed_questions(**question).detach().numpy()[0]
        top = np.argsort(-scores, kind="stable")[:5]
        assert prediction["retrieved_doc_ids"][:3] == [str(i) for i in top[:3]]
    hits = []
    for record, prediction in zip(records, predictions, strict=True):
        texts = [normalize_answer(cases["block_texts"][int(d)]) for d in prediction["retrieved_doc_ids"][:3]]
        hits.append([any(f" {normalize_answer(a)} " in f" {t} " for a in record["answers"]) for t in texts])
    assert summary["answer_recall@3"] == pytest.approx(100 * np.mean([any(h) for h in hits]))
    assert summary["answer_recall@1"] == pytest.approx(100 * np.mean([h[0] for h in hits]))
    assert "gold_recall@1" not in summary  # only one record names a gold passage


def test_gold_recall_and_regex_match():
    model, tokenizer, cases = fixture_model("tiny")
    question = cases["questions"][0]["question"]
    predicted = model.answer(question)
    records = [{"question": question, "answers": [f"^{predicted['answer'][:2]}.*"], "gold_doc_id": str(
        predicted["doc_id"])}]
    summary, _ = evaluate_openqa(model, tokenizer, records, match="regex", ks=(1,), progress=False)
    assert summary["exact_match"] == 100.0 and summary["gold_recall@1"] in (0.0, 100.0)
    with pytest.raises(ValueError, match="No QA records"):
        evaluate_openqa(model, tokenizer, [], progress=False)


def test_evaluate_script_writes_predictions_and_summary(tmp_path):
    model, tokenizer, cases = fixture_model("tiny")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    model.index.save_to_disk(tmp_path / "index")
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("".join(json.dumps({"question": r["question"], "answer": r["answers"]}) + "\n"
                               for r in records_for(model, cases)))
    result = subprocess.run([sys.executable, "examples/evaluate_openqa.py", "--model", str(tmp_path / "model"),
                             "--index", str(tmp_path / "index"), "--qa-file", str(qa_file), "--ks", "1,2",
                             "--output-dir", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert summary["count"] == 3 == len(lines) and summary["exact_match"] == pytest.approx(200 / 3)
    assert "exact_match" in result.stdout and "answer_recall@2" in result.stdout
