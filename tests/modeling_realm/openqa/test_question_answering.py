"""`pipeline("question-answering")` for REALM (issue 15, item 8): the task transformers 5 removed, re-registered for
RealmForOpenQA (open-domain, or a given context) and RealmReader (a given context) checkpoints only."""

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import transformers.pipelines
from transformers import BertConfig, BertForQuestionAnswering, pipeline

from modeling_realm import OpenDomainQAPipeline, RealmEmbedder, RealmReader
from modeling_realm.openqa.answering import read_context
from tests.modeling_realm.openqa.test_answering import fixture_model

CONTEXT = "paris is the capital of france. " * 3 + "alan turing was a british mathematician."


def spans(answers):
    return [(a["answer"], a["start"], a["end"], a["block_id"], round(a["score"], 5)) for a in answers]


@pytest.fixture
def tiny():
    model, tokenizer, cases = fixture_model("tiny")
    return model, tokenizer, [case["question"] for case in cases["questions"]]


def test_without_a_context_it_answers_from_the_index_as_answer_does(tiny):
    model, tokenizer, questions = tiny
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    one = qa(question=questions[0])
    assert one == model.answer(questions[0])
    assert isinstance(one["score"], float) and isinstance(one["start"], int) and isinstance(one["end"], int)
    assert one["text"][one["start"]:one["end"]] == one["answer"] and one["block_id"] is not None
    assert qa(questions, top_k=2, batch_size=3, retrieval="dense") == \
        model.answer(questions, top_k=2, batch_size=3, retrieval="dense")
    listed = qa(question=[questions[0]])  # a list in, a list out
    assert isinstance(listed, list) and listed[0] == one


def test_with_a_context_it_reads_the_context_as_read_context_does(tiny):
    model, tokenizer, questions = tiny
    model.index = None  # retrieval would fail: the context must be read directly
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    expected = read_context(model, tokenizer, "who was a british mathematician?", CONTEXT, 3)
    got = qa(question="who was a british mathematician?", context=CONTEXT, top_k=3)
    assert got == expected and len(got) == 3
    assert {"score", "start", "end", "answer"} <= set(got[0]) and got[0]["block_id"] is None
    assert all(CONTEXT[a["start"]:a["end"]] == a["answer"] for a in got)
    assert qa("who was a british mathematician?", CONTEXT) == expected[0]  # 4.x's positional (question, context)


def test_the_call_shapes_of_4x(tiny):
    model, tokenizer, questions = tiny
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    alone = read_context(model, tokenizer, questions[0], CONTEXT, 1)[0]
    example = {"question": questions[0], "context": CONTEXT}
    assert qa(example) == alone and qa(X=[example]) == [alone]
    assert qa(data=SimpleNamespace(question_text=questions[0], context_text=CONTEXT)) == alone  # SquadExample-like
    assert qa(question=[questions[0]], context=CONTEXT) == qa(question=[questions[0]], context=[CONTEXT]) == [alone]
    # several examples, positionally; one without a context is answered from the index, in the same call
    mixed = qa(example, {"question": questions[1]}, questions[2])  # the last two in one batch: scores within 1e-5
    assert mixed[0] == alone and spans(mixed[1:]) == spans(model.answer(questions[1:3]))
    with pytest.raises(ValueError, match="2 contexts for 1 questions"):
        qa(question=["who?"], context=["a", "b"])
    with pytest.raises(KeyError, match="'question'"):
        qa({"query": "who?", "context": CONTEXT})
    with pytest.raises(TypeError, match="not both"):
        qa(example, question="who?")
    with pytest.raises(ValueError, match="Pass a question"):
        qa(context=CONTEXT)


def test_top_k_and_max_answer_len(tiny):
    model, tokenizer, questions = tiny
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, top_k=2)  # a default for every call
    assert len(qa(question=questions[0])) == 2 and len(qa(question=questions[0], top_k=3)) == 3
    everything = read_context(model, tokenizer, questions[0], CONTEXT, top_k=1000)
    assert any(a["token_end"] > a["token_start"] for a in everything[:5])  # the cap has something to skip
    capped = qa(question=questions[0], context=CONTEXT, top_k=5, max_answer_len=1)
    assert spans(capped) == spans([a for a in everything if a["token_end"] == a["token_start"]][:5])
    open_domain = qa(question=questions, top_k=4, max_answer_len=1)
    assert all(len(answers) == 4 for answers in open_domain)
    assert all(a["token_end"] == a["token_start"] for answers in open_domain for a in answers)
    with pytest.warns(FutureWarning, match="top_k"):
        assert len(qa(question=questions[0], topk=3)) == 3
    for bad in ({"top_k": 0}, {"max_answer_len": 0}):
        with pytest.raises(ValueError, match=">= 1"):
            qa(question=questions[0], **bad)


def test_arguments_that_do_not_apply_to_realm_are_refused_with_the_reason(tiny):
    model, tokenizer, questions = tiny
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    for name, value, reason in (("doc_stride", 128, "reader_seq_len"), ("max_seq_len", 384, "reader_seq_len"),
                                ("max_question_len", 64, "searcher_seq_len"),
                                ("handle_impossible_answer", True, "no 'no answer'"),
                                ("align_to_words", True, "wordpiece")):
        with pytest.raises(ValueError, match=reason):
            qa(question=questions[0], context=CONTEXT, **{name: value})
    assert qa(question=questions[0], handle_impossible_answer=False, align_to_words=False) == \
        model.answer(questions[0])
    with pytest.raises(TypeError, match="unexpected arguments"):
        qa(question=questions[0], nonsense=1)


def test_a_question_without_context_needs_an_index(tiny):
    model, tokenizer, questions = tiny
    index, model.index = model.index, None
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="No index is attached.*index=index.*context="):
        qa(question=questions[0])
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, index=index)
    assert model.index is index and qa(question=questions[0])["block_id"] is not None


def test_a_reader_checkpoint_by_path_reads_a_context(tiny, tmp_path):
    """A RealmReader saved with the open-QA model's reader weights reads a context exactly as the open-QA model."""
    model, tokenizer, questions = tiny
    reader = RealmReader(copy.deepcopy(model.config))
    reader.load_state_dict(model.reader.state_dict())
    reader.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    qa = pipeline("question-answering", model=str(tmp_path))
    assert type(qa.model) is RealmReader
    got = qa(question=questions[0], context=CONTEXT, top_k=3)
    expected = read_context(model, tokenizer, questions[0], CONTEXT, 3)
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected]
    np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in expected], atol=1e-6)
    with pytest.raises(ValueError, match="RealmReader checkpoint reads a given passage: pass context="):
        qa(question=questions[0])
    with pytest.raises(ValueError, match="no question tower"):
        pipeline("question-answering", model=str(tmp_path), index=model.index)


def test_an_open_qa_checkpoint_by_path_with_an_index(tiny, tmp_path):
    model, tokenizer, questions = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    qa = pipeline("question-answering", model=str(tmp_path), index=model.index)
    assert qa(question=questions, top_k=2) == model.answer(questions, top_k=2)


def test_other_models_are_still_refused(tiny, tmp_path):
    _, tokenizer, _ = tiny
    bert = BertForQuestionAnswering(BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=8))
    with pytest.raises(KeyError, match="removed from transformers.*REALM.*BertForQuestionAnswering"):
        pipeline("question-answering", model=bert, tokenizer=tokenizer)
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(KeyError, match="removed from transformers.*BertConfig checkpoint"):
        pipeline("question-answering", model=str(tmp_path / "bert"))
    embedder = RealmEmbedder(copy.deepcopy(tiny[0].config))
    embedder.save_pretrained(tmp_path / "embedder")
    tokenizer.save_pretrained(tmp_path / "embedder")
    with pytest.raises(ValueError, match="RealmForOpenQA .* or RealmReader"):
        pipeline("question-answering", model=str(tmp_path / "embedder"))
    with pytest.raises(KeyError, match="no default model"):
        pipeline("question-answering")


def test_only_question_answering_leaves_the_removed_tasks():
    removed = transformers.pipelines.REMOVED_TASKS
    assert "question-answering" not in removed and {"summarization", "visual-question-answering"} <= set(removed)
    with pytest.raises(KeyError, match="summarization has been removed"):
        pipeline("summarization")
    assert transformers.pipelines.PIPELINE_REGISTRY.supported_tasks["open-domain-qa"]["impl"] is OpenDomainQAPipeline
    from modeling_realm.openqa.question_answering import register_question_answering

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_question_answering()  # idempotent: no "already registered" overwrite
