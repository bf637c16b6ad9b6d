"""The precision switch where users answer: `answer()`, both pipelines (by object and by path with
`model_kwargs={"precision": ...}`); `realm-qa --precision` is in tests/modeling_realm/apps/test_ask_precision.py."""

import pytest
from transformers import pipeline

from modeling_realm.models.precision import backbone_precision
from tests.modeling_realm.openqa.test_answering import fixture_model


def spans(answers):
    return [[(a["block_id"], a["start"], a["end"]) for a in question] for question in answers]


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
@pytest.mark.parametrize("config_name", ["tiny", "google"])
def test_answers_equal_float32_answers(config_name, precision):
    model, _, cases = fixture_model(config_name)
    questions = [case["question"] for case in cases["questions"]]
    expected = model.answer(questions, top_k=2)
    model.set_precision(precision)
    got = model.answer(questions, top_k=2)
    assert spans(got) == spans(expected)
    assert [a[0]["score"] for a in got] == pytest.approx([a[0]["score"] for a in expected], abs=0.05)


@pytest.mark.parametrize("task", ["open-domain-qa", "question-answering"])
def test_pipelines_by_path_take_the_precision(task, tmp_path):
    model, tokenizer, cases = fixture_model("google")
    questions = [case["question"] for case in cases["questions"]]
    model.save_pretrained(tmp_path, model_card=False)
    tokenizer.save_pretrained(tmp_path)
    qa = pipeline(task, model=str(tmp_path), index=model.index, model_kwargs={"precision": "int8"})
    assert qa.model.config.precision == "int8" and backbone_precision(qa.model) == "int8"
    assert qa(question=questions, top_k=2) == model.set_precision("int8").answer(questions, top_k=2)
