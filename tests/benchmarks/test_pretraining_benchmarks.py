"""The pretraining benchmarks: the synthetic world of benchmarks/pretraining_learns.py is built so that only retrieval
can answer (facts masked, query documents outside the index, random blocks never the right one), and both scripts
run end to end at their --quick size and report figures that make sense."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.benchmarks.test_benchmarks import parse_table
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pretraining_learns  # noqa: E402


def run_benchmark(name: str, *args: str, timeout: int = 600) -> tuple[list[dict], dict]:
    command = [sys.executable, str(ROOT / "benchmarks" / name), "--quick", *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    return parse_table(completed.stdout), summary


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    args = pretraining_learns.parse_args(["--quick"])
    return pretraining_learns.make_world(args, tmp_path_factory.mktemp("world")), args


def test_queries_mask_a_fact_only_retrieval_can_supply(world):
    world, args = world
    blocks, people = world["blocks"], world["people"]
    indexed = {block["doc_id"] for block in blocks}
    held_out = {row["person"] for row in world["queries"]["held_out"]}
    trained = {row["person"] for row in world["queries"]["trained"]}
    assert not held_out & trained and len(held_out | trained) == args.people
    assert len(held_out) == round(args.held_out * args.people)
    for row in world["queries"]["trained"] + world["queries"]["held_out"]:
        (start, end), = row["salient_spans"]
        fact = row["text"][start:end]
        person = people[row["person"]]
        assert fact in {person.city.lower(), person.profession, str(person.year)}
        assert fact in blocks[row["person"]]["text"].lower()  # the person's biography holds the masked fact
        assert row["doc_id"] not in indexed  # the query's own document is never retrievable
    tokenizer = world["tokenizer"]
    for block in blocks:  # word-level vocabulary: every word is one wordpiece, never [UNK]
        assert tokenizer.unk_token_id not in tokenizer(block["text"])["input_ids"]


def test_fixed_random_blocks_never_hold_the_answer_and_stay_fixed(world):
    world, args = world
    retrieve = pretraining_learns.random_block_retriever(world, 5, seed=0)
    rows = world["queries"]["trained"][:10]
    doc_ids = [row["doc_id"] for row in rows]
    first = retrieve(np.zeros((10, 4), np.float32), 5, doc_ids)
    again = retrieve(np.ones((10, 4), np.float32), 5, doc_ids)
    np.testing.assert_array_equal(first.block_ids, again.block_ids)  # the query embedding plays no part
    for row, ids, blocks in zip(rows, first.block_ids, first.blocks, strict=True):
        assert row["person"] not in ids and len(set(ids.tolist())) == 5
        assert [block["block_id"] for block in blocks] == ids.tolist()


def test_towers_option_shares_or_separates_the_retriever_towers(world):
    world, args = world
    shared, _ = pretraining_learns.fresh_models(args, world["tokenizer"])
    assert args.towers == "shared" and shared.query_embedder is shared.embedder  # the default: one tower
    separate, _ = pretraining_learns.fresh_models(pretraining_learns.parse_args(["--quick", "--towers", "separate"]),
                                                  world["tokenizer"])
    assert separate.query_embedder is not separate.embedder
    tokens = world["tokenizer"]([world["blocks"][0]["text"]], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # one tower: a text embeds the same as a query and as a block
        torch.testing.assert_close(shared.embed_queries(tokens), shared.embed_blocks(tokens))
        assert not torch.allclose(separate.embed_queries(tokens), separate.embed_blocks(tokens))


@pytest.mark.slow
def test_pretraining_learns_quick_reports_every_row(tmp_path):
    rows, summary = run_benchmark("pretraining_learns.py", "--output-dir", str(tmp_path))
    names = [row["model"] for row in rows]
    assert names == ["initialisation", "ICT warm start only", "ICT + REALM", "ICT + REALM, refresh disabled",
                     "ICT + REALM, fixed random blocks", "no ICT warm start"]
    for row in rows:
        for column in ("held-out recall@1", "held-out masked acc", "trained recall@1", "trained masked acc"):
            assert 0.0 <= float(row[column]) <= 1.0
    assert summary["queries"] == {"trained": 54, "held_out": 18}  # 3 facts each of 18 + 6 people
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert sum(1 for p in (tmp_path / "REALM").glob("v*") if p.is_dir()) >= 1  # the sync refresh wrote versions


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason=f"SQuAD passages not found under {SHARED_DATA}")
def test_squad_retrieval_quick_reports_recall_for_every_stage(tmp_path):
    rows, summary = run_benchmark("squad_retrieval.py", "--output-dir", str(tmp_path), timeout=900)
    by_name = {row["retriever"]: row for row in rows}
    assert {"initialisation", "after ICT", "after ICT + REALM", "BM25 (bm25s)"} <= set(by_name)
    assert summary["passages"] == 30 and summary["questions"] == 60
    for name, recall in summary["recall"].items():
        values = [recall[f"recall@{k}"] for k in (1, 5, 20)]
        assert all(0 <= v <= 100 for v in values) and values == sorted(values), name
    assert summary["recall"]["BM25 (bm25s)"]["recall@20"] > 50  # 30 passages: lexical overlap finds most gold ones
    for stage in ("init", "ict/final", "realm/final/retriever"):
        assert (tmp_path / stage / "config.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason=f"SQuAD passages not found under {SHARED_DATA}")
def test_squad_hybrid_quick_reports_every_mode(tmp_path):
    rows, summary = run_benchmark("squad_hybrid.py", "--output-dir", str(tmp_path), timeout=900)
    names = {row["retrieval"] for row in rows}
    assert {"RealmRetriever: dense", "BM25 (lexical part)", "mean-pooled MiniLM: hybrid interpolation, weight 0.5 "
            "(default)"} <= names and summary["passages"] == 30
    for name, recall in summary["recall"].items():
        values = [recall[f"recall@{k}"] for k in (1, 5, 20)]
        assert all(0 <= v <= 100 for v in values) and values == sorted(values), name


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason=f"SQuAD passages not found under {SHARED_DATA}")
def test_squad_openqa_quick_runs_the_scripts_and_scores_held_out_passages(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "squad_openqa.py"), "--quick", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["passages"] == 40 and summary["held_out_questions"] == 20
    assert set(summary["seconds"]) == {"index", "retriever", "retriever_index", "finetune", "evaluate"}
    assert summary["retriever_model"] == str(tmp_path / "retriever" / "final")  # fine-tuning started from it
    held_out = summary["held_out"]
    assert held_out["count"] == 20 and 0 <= held_out["exact_match"] <= held_out["f1"] <= 100
    for values in ([held_out[f"gold_recall@{k}"] for k in (1, 5, 20)],
                   [summary["initial"][f"recall@{k}"] for k in (1, 5, 20)],
                   [summary["retriever"][f"recall@{k}"] for k in (1, 5, 20)]):
        assert all(0 <= v <= 100 for v in values) and values == sorted(values)
    # split by passage: no held-out question is about a passage a training question is about
    passages = {name: {json.loads(line)["passage_id"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()}
                for name in ("train", "held_out")}
    assert passages["train"] and passages["held_out"] and not passages["train"] & passages["held_out"]
    predictions = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 20 and all({"prediction", "f1"} <= set(json.loads(line)) for line in predictions)
