"""examples/evaluate_openqa.py on the tiny open-QA fixture: every retrieval mode the index serves is reported."""

import importlib.util
import json
from pathlib import Path

from index_builder import BlockIndex
from modeling_realm import RealmForOpenQA
from tests.helpers import PARITY, VOCAB
from tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = PARITY / "tiny" / "RealmForOpenQA"


def load_example():
    spec = importlib.util.spec_from_file_location("evaluate_openqa", ROOT / "examples" / "evaluate_openqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_retrieval_mode_of_a_hybrid_index_is_evaluated(tmp_path, capsys):
    cases = json.loads((FIXTURE / "openqa_cases.json").read_text())
    model = RealmForOpenQA.from_pretrained(FIXTURE)
    model.save_pretrained(tmp_path / "model")
    RealmTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(tmp_path / "model")
    BlockIndex.from_arrays(model.block_emb.numpy(), cases["block_texts"], progress=False,
                           lexical={"stopwords": None}).save_to_disk(tmp_path / "index")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": c["question"], "answer": ["paris"]}) + "\n"
                          for c in cases["questions"]))
    summary = load_example().main(["--model", str(tmp_path / "model"), "--index", str(tmp_path / "index"),
                                   "--qa-file", str(qa), "--ks", "1,2", "--output-dir", str(tmp_path / "out")])
    assert summary["retrieval"] == "hybrid" and set(summary["by_retrieval"]) == {"dense", "lexical", "hybrid"}
    assert summary["answer_recall@2"] == summary["by_retrieval"]["hybrid"]["answer_recall@2"]
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["by_retrieval"]["lexical"]["count"] == len(cases["questions"])
    header = capsys.readouterr().out.splitlines()[0]
    assert header.split()[1:] == ["dense", "lexical", "hybrid"]
    dense_only = load_example().main(["--model", str(tmp_path / "model"), "--index", str(tmp_path / "index"),
                                      "--qa-file", str(qa), "--ks", "1", "--retrieval", "dense",
                                      "--output-dir", str(tmp_path / "dense")])
    assert dense_only["retrieval"] == "dense" and "by_retrieval" not in dense_only
