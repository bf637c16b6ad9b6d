"""QA metrics: evaluate_predictions (EM/F1, regex), retrieval_recall, gold_block_recall, and the evaluate module."""

import inspect
import json
import logging
import os

import numpy as np
import pytest

from modeling_realm.openqa.answers import load_qa_file
from modeling_realm.openqa.metrics import OPEN_QA_METRIC_PATH, evaluate_predictions, gold_block_recall, retrieval_recall
from tests.helpers import SHARED_DATA

PREDICTIONS = ["Paris", "the eiffel tower in paris", "London", ""]
REFERENCES = [["paris", "Paris, France"], ["Eiffel Tower"], ["Berlin"], ["x"]]
# EM: 1, 0, 0, 0 -> 25 %. F1: 1, 2/3 ([eiffel tower in paris] vs [eiffel tower]: P 1/2, R 1), 0, 0 -> 5/12.
EXPECTED = {"exact_match": 25.0, "f1": pytest.approx(100 * 5 / 12), "count": 4}

TREC_PREDICTIONS = ["Sweden and Norway", "in Sweden", "2,550 feet"]
TREC_REFERENCES = [["Swed(en|ish)"], ["Sweden"], [r"\b2,?[4567][0-9][0-9]\b"]]  # 1, 0 (not at the start), 1


def test_evaluate_predictions_hand_computed():
    assert evaluate_predictions(PREDICTIONS, REFERENCES) == EXPECTED


def test_evaluate_predictions_regex_mode():
    result = evaluate_predictions(TREC_PREDICTIONS, TREC_REFERENCES, match="regex")
    assert result == {"exact_match": pytest.approx(200 / 3), "count": 3}
    # the same references read as plain strings match nothing
    assert evaluate_predictions(TREC_PREDICTIONS, TREC_REFERENCES)["exact_match"] == 0.0


def test_evaluate_predictions_rejects_bad_input():
    with pytest.raises(ValueError, match="predictions has 1 entries but references has 2"):
        evaluate_predictions(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="nothing to score"):
        evaluate_predictions([], [])
    with pytest.raises(TypeError, match="predictions must be strings"):
        evaluate_predictions([None], [["a"]])
    with pytest.raises(ValueError, match="match must be one of"):
        evaluate_predictions(["a"], [["a"]], match="exact")


BLOCKS = [
    ["A comparison of capitals.", "Paris is large.", "Lyon is smaller."],  # "paris" first at rank 1
    ["New York City is big.", "Boston.", "Chicago."],  # "new york" at rank 0
    ["Munich.", "Hamburg.", "Bonn."],  # "berlin" nowhere
]
ANSWERS = [["paris"], ["new york"], ["Berlin"]]


def test_retrieval_recall_hand_built():
    result = retrieval_recall(BLOCKS, ANSWERS, ks=(3, 1, 2), progress=False)
    assert list(result) == ["recall@1", "recall@2", "recall@3"]
    assert result == {"recall@1": pytest.approx(100 / 3), "recall@2": pytest.approx(200 / 3),
                      "recall@3": pytest.approx(200 / 3)}


def test_retrieval_recall_regex():
    blocks = [["It stands 2,550 feet high."], ["Sold in Stockholm."]]
    patterns = [[r"\b2,?[4567][0-9][0-9]\b"], ["Swed(en|ish)"]]
    assert retrieval_recall(blocks, patterns, ks=(1,), match="regex", progress=False) == {"recall@1": 50.0}


def test_retrieval_recall_drops_unreachable_ks(caplog):
    with caplog.at_level(logging.WARNING, logger="modeling_realm.openqa.metrics"):
        result = retrieval_recall(BLOCKS, ANSWERS, progress=False)  # default ks (1, 5, 20, 100), 3 blocks each
    assert list(result) == ["recall@1"]
    assert "recall@[5, 20, 100] left out" in caplog.text
    with pytest.raises(ValueError, match="No k in \\[5\\] is reachable"):
        retrieval_recall(BLOCKS, ANSWERS, ks=(5,), progress=False)
    with pytest.raises(ValueError, match="positive integers"):
        retrieval_recall(BLOCKS, ANSWERS, ks=(0, 1), progress=False)


def test_gold_block_recall_mixed_id_types():
    retrieved = np.array([[3, 1, 2], [0, 5, 7], [9, 8, 6]])
    gold = ["1", np.int64(5), {6, 100}]  # corpus doc ids are strings; integers and sets of ids work too
    assert gold_block_recall(retrieved, gold, ks=(1, 2, 3)) == {
        "recall@1": 0.0, "recall@2": pytest.approx(200 / 3), "recall@3": 100.0}
    with pytest.raises(ValueError, match="Question 1 has no gold doc id"):
        gold_block_recall(retrieved[:2], ["1", None], ks=(1,))
    with pytest.raises(TypeError, match="must be a list"):
        gold_block_recall(["3 1 2"], ["1"], ks=(1,))


# ---------------------------------------------------------------- the evaluate module, loaded offline by path


@pytest.fixture(scope="module")
def open_qa_metric():
    evaluate = pytest.importorskip("evaluate", reason="the `evaluate` package (extra `eval`) is not installed")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return evaluate.load(OPEN_QA_METRIC_PATH)


def test_evaluate_module_runs_from_its_cached_copy(open_qa_metric):
    loaded_from = inspect.getfile(type(open_qa_metric))
    assert loaded_from != OPEN_QA_METRIC_PATH and loaded_from.startswith(os.environ["HF_HOME"])
    assert type(open_qa_metric).__name__ == "OpenQaExactMatch"


def test_evaluate_module_matches_library(open_qa_metric):
    assert open_qa_metric.compute(predictions=PREDICTIONS, references=REFERENCES) == EXPECTED
    assert open_qa_metric.compute(predictions=TREC_PREDICTIONS, references=TREC_REFERENCES, regex=True) == \
        evaluate_predictions(TREC_PREDICTIONS, TREC_REFERENCES, match="regex")


def test_evaluate_module_matches_library_on_real_data(open_qa_metric):
    nq, trec = SHARED_DATA / "nq_open" / "NQ-open.dev.jsonl", SHARED_DATA / "curatedtrec" / "CuratedTrec-test.txt"
    if not (nq.is_file() and trec.is_file()):
        pytest.skip(f"real data {nq} / {trec} is absent (see ../shared/data/SOURCES.md)")
    questions = load_qa_file(nq)
    references = [record["answers"] for record in questions]
    shifted = [answers[0] for answers in references[1:] + references[:1]]  # each question gets the next one's answer
    result = open_qa_metric.compute(predictions=shifted, references=references)
    assert result == evaluate_predictions(shifted, references)
    assert 0 < result["exact_match"] < 5 and result["f1"] > result["exact_match"]
    assert evaluate_predictions([answers[-1] for answers in references], references)["exact_match"] == 100.0
    trec_records = load_qa_file(trec, match="regex")
    patterns = [record["answers"] for record in trec_records]
    # every other question "answered" with its own pattern text: literal patterns such as "China" match themselves
    guesses = [answers[0] if number % 2 == 0 else "no idea" for number, answers in enumerate(patterns)]
    regex_result = open_qa_metric.compute(predictions=guesses, references=patterns, regex=True)
    assert regex_result == evaluate_predictions(guesses, patterns, match="regex")
    assert 10 < regex_result["exact_match"] <= 50


def test_squad_gold_passages_hold_their_answers():
    qa_path = SHARED_DATA / "squad" / "squad-dev-v1.1.qa.jsonl"
    passages_path = SHARED_DATA / "squad" / "squad-dev-v1.1.passages.jsonl"
    if not (qa_path.is_file() and passages_path.is_file()):
        pytest.skip(f"real data {qa_path} is absent (see ../shared/data/SOURCES.md)")
    passages = {}
    for line in passages_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        passages[str(record["id"])] = record["text"]
    questions = load_qa_file(qa_path)
    answers = [record["answers"] for record in questions]
    gold_first = [[passages[record["gold_doc_id"]], passages["0"]] for record in questions]
    # Every SQuAD answer is a substring of its context; as a whole-word sequence it is found in all but one:
    # "How many siblings did Tesla have?" -> "four", whose context only says "the fourth of five children".
    assert retrieval_recall(gold_first, answers, ks=(1,), progress=False)["recall@1"] == \
        pytest.approx(100 * (len(questions) - 1) / len(questions))
    ids = [[record["gold_doc_id"], "0"] for record in questions]
    wrong_first = [["0", record["gold_doc_id"]] for record in questions]
    assert gold_block_recall(ids, [r["gold_doc_id"] for r in questions], ks=(1,)) == {"recall@1": 100.0}
    on_passage_0 = sum(record["gold_doc_id"] == "0" for record in questions)
    assert gold_block_recall(wrong_first, [int(r["gold_doc_id"]) for r in questions], ks=(1, 2)) == {
        "recall@1": pytest.approx(100 * on_passage_0 / len(questions)), "recall@2": 100.0}
