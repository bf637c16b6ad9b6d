"""Training batches for open-QA fine-tuning: the gold annotations and losses 4.57.6 computed, regex answers."""

import pytest
import torch

from modeling_realm.openqa.batches import training_batch
from tests.helpers import PARITY, assert_close, load_io
from tests.modeling_realm.openqa.test_answering import fixture_model


@pytest.mark.parametrize("config_name", ["tiny", "google"])
def test_training_batch_gives_4x_annotations_and_losses(config_name):
    model, tokenizer, cases = fixture_model(config_name)
    questions = [case["question"] for case in cases["questions"]]
    answers = [case["answers"] for case in cases["questions"]]
    batch = training_batch(model, tokenizer, questions, answers, num_blocks=model.config.reader_beam_size)
    with torch.no_grad():
        out = model(**batch)
    directory = PARITY / config_name / "RealmForOpenQA"
    for q in range(len(questions)):
        inputs, expected = load_io(directory, prefix=f"q{q}.")
        assert batch["block_ids"][q].tolist() == inputs["block_ids"].tolist()
        assert batch["has_answers"][q].tolist() == inputs["has_answers"].tolist()
        width = inputs["start_positions"].shape[-1]
        starts = batch["start_positions"][q]
        assert torch.equal(starts[:, :width], inputs["start_positions"]) and (starts[:, width:] == -1).all()
        assert_close(out.retriever_loss[q], expected["retriever_loss"], what="retriever_loss")
        assert_close(out.reader_loss[q], expected["reader_loss"], what="reader_loss")


def test_regex_answers_mark_the_same_spans_as_strings():
    model, tokenizer, cases = fixture_model("google")
    question, everything = cases["questions"][1]["question"], len(cases["block_texts"])
    strings = training_batch(model, tokenizer, [question], [["paris"]], num_blocks=everything)
    regexes = training_batch(model, tokenizer, [question], [[r"par+is|nobody here"]], match="regex",
                             num_blocks=everything)
    assert strings["has_answers"].sum() == 2 and (strings["start_positions"] >= 0).any()
    for name in ("has_answers", "start_positions", "end_positions"):
        assert torch.equal(strings[name], regexes[name]), name


def test_gradients_reach_the_question_tower_but_not_the_index():
    model, tokenizer, cases = fixture_model("tiny")
    model.train()
    batch = training_batch(model, tokenizer, [c["question"] for c in cases["questions"]],
                           [c["answers"] for c in cases["questions"]])
    assert batch["block_ids"].shape[1] == model.config.searcher_beam_size
    model(**batch).loss.backward()
    assert model.embedder.cls.dense.weight.grad.abs().sum() > 0
    assert not batch["block_embeddings"].requires_grad


def test_training_batch_errors():
    model, tokenizer, _ = fixture_model("tiny")
    with pytest.raises(ValueError, match="non-empty list of answers"):
        training_batch(model, tokenizer, ["who?"], [[]])
    with pytest.raises(ValueError, match="Invalid answer regular expression"):
        training_batch(model, tokenizer, ["who?"], [["(unclosed"]], match="regex")


def test_reading_comprehension_reads_each_questions_best_ranked_answer_block():
    model, tokenizer, cases = fixture_model("google")
    everything = len(cases["block_texts"])
    questions = [c["question"] for c in cases["questions"]] + ["who wrote nothing at all?"]
    answers = [c["answers"] for c in cases["questions"]] + [["no such answer anywhere"]]
    retrieved = training_batch(model, tokenizer, questions, answers, num_blocks=everything)
    batch = training_batch(model, tokenizer, questions, answers, num_blocks=everything, read="answer_block")
    answered = [q for q in range(len(questions)) if retrieved["has_answers"][q].any()]
    assert len(answered) < len(questions)  # the last question is left out
    assert batch["reader_input_ids"].shape[:2] == (len(answered), 1)
    assert torch.equal(batch["input_ids"], retrieved["input_ids"][answered])
    for row, q in enumerate(answered):
        first = int(retrieved["has_answers"][q].nonzero()[0])
        ids = retrieved["block_ids"][q].tolist()
        assert batch["block_ids"][row].tolist() == [ids[first]] + ids[:first] + ids[first + 1:]
        torch.testing.assert_close(batch["block_embeddings"][row, 0], retrieved["block_embeddings"][q, first])
        assert batch["has_answers"][row, 0] and (batch["start_positions"][row, 0] >= 0).any()
    with torch.no_grad():
        both = model(**retrieved).retriever_loss[answered], model(**batch).retriever_loss
    torch.testing.assert_close(*both)  # the order of the retrieved blocks does not change the retriever loss
    assert training_batch(model, tokenizer, questions[-1:], answers[-1:], read="answer_block") is None
    with pytest.raises(ValueError, match="read must be one of"):
        training_batch(model, tokenizer, questions, answers, read="gold")
