"""`realm-qa --precision`: parsed, refused when unknown, and applied to the model that answers."""

import pytest

from modeling_realm.apps import ask
from modeling_realm.models.precision import backbone_precision
from tests.modeling_realm.openqa.test_answering import fixture_model


def test_realm_qa_precision_flag(monkeypatch, capsys):
    model, _, cases = fixture_model("tiny")
    monkeypatch.setattr("modeling_realm.apps.demo.load_demo", lambda rebuild=False: model)
    questions = [cases["questions"][0]["question"]]
    monkeypatch.setattr("modeling_realm.apps.demo.demo_questions", lambda model=None: questions)
    assert ask.parse_args([]).precision is None  # default: the precision saved with the model
    assert ask.main(["--precision", "int8", "--json"]) == 0
    assert model.config.precision == "int8" and backbone_precision(model) == "int8"
    assert '"answers"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ask.parse_args(["--precision", "fp16"])
    assert "--precision: invalid choice: 'fp16'" in capsys.readouterr().err
