"""The offline demo behind `realm-qa`: built (with few steps here), cached, reloaded, and answering with evidence."""

import json

import pytest

from modeling_realm.apps import ask, demo, synthetic


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The demo recipe with a small corpus and a handful of training steps, cached in a folder of this module."""
    cache = tmp_path_factory.mktemp("demo-cache")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dict(num_people=24, held_out_people=4, retriever_steps=2, reader_steps=2,
                                batch_size=4).items():
            patch.setitem(demo.SETTINGS, name, value)
        patch.setenv("REALM_HF_CACHE", str(cache))
        yield cache / demo.DEMO_VERSION


def test_demo_is_built_once_then_loaded_from_the_cache(small_demo, monkeypatch):
    model = demo.load_demo()
    summary = json.loads((small_demo / "summary.json").read_text())
    assert summary["held_out_questions"] == len([q for q in synthetic.questions(synthetic.invent_people(24))
                                                 if int(q["doc_id"]) < 4])
    assert len(model.index) == 24 and model.index.manifest.embedder_fingerprint
    assert model.index.manifest.encoding is None  # float32: a bfloat16 index trained a worse demo reader
    answer = model.answer(demo.demo_questions()[0])
    assert answer["text"][answer["start"]:answer["end"]] == answer["answer"] and answer["title"]

    def fail(directory):
        raise AssertionError("the cached demo must not be rebuilt")

    monkeypatch.setattr(demo, "build_demo", fail)
    again = demo.load_demo()
    assert again.answer(demo.demo_questions()[0]) == answer


def test_realm_qa_prints_answers_with_evidence(small_demo, capsys):
    assert ask.main(["where was somebody born?", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: where was somebody born?") and out.count("evidence: ") == 2 and "[" in out
    ask.main(["--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["question"] for line in lines] == demo.demo_questions()
    assert all(set(line["answers"][0]) >= {"answer", "score", "block_id", "title", "text"} for line in lines)


def test_synthetic_questions_are_answered_by_their_document():
    people = synthetic.invent_people(50, seed=3)
    docs = {d["doc_id"]: d for d in synthetic.documents(people)}
    items = synthetic.questions(people)
    assert len({p.name for p in people}) == 50 and len(items) >= 200
    for item in items:
        assert item["answer"][0] in docs[item["doc_id"]]["text"]
    assert synthetic.invent_people(50, seed=3) == people and synthetic.invent_people(50, seed=4) != people
