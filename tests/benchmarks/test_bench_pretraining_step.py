"""benchmarks/bench_pretraining_step.py: the phases of a REALM pretraining step cover the step, and an asynchronous
index refresh swaps new indices in while blocking the training loop less than a synchronous rebuild."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_pretraining_step  # noqa: E402

PHASES = list(bench_pretraining_step.PHASES)


def test_phase_summary_adds_up():
    runs = [{"query_embedding": 1.0, "search_and_fetch": 2.0, "candidate_inputs": 3.0, "forward_backward": 10.0,
             "optimizer": 4.0},
            {"query_embedding": 3.0, "search_and_fetch": 2.0, "candidate_inputs": 1.0, "forward_backward": 30.0,
             "optimizer": 4.0}]
    summary = bench_pretraining_step.summarise_phases(runs)
    assert summary["step"]["per_step_s"] == [20.0, 40.0]
    assert summary["retrieval"]["per_step_s"] == [3.0, 5.0]
    assert summary["retrieval_and_inputs"]["median_s"] == pytest.approx(6.0)
    assert sum(summary[key]["share"] for key in PHASES) == pytest.approx(1.0)
    assert summary["retrieval"]["share"] == pytest.approx(8.0 / 60.0)  # means, not medians


def test_query_batches_fill_the_query_length_and_name_indexed_documents():
    args = bench_pretraining_step.parse_args(["--quick"])
    tokenizer = bench_pretraining_step.load_tokenizer()
    batches = bench_pretraining_step.QueryBatches(args, tokenizer)
    first, second = batches(), batches()
    for batch in (first, second):
        assert batch["input_ids"].shape == (args.batch_size, args.query_length)
        assert bool(batch["attention_mask"].all())  # every query fills REALM's query length
        assert (batch["labels"] != -100).any(1).all()  # and has masked targets
        assert all(0 <= int(d) < args.refresh_blocks // 4 for d in batch["doc_ids"])  # documents of the index
    assert not bool((first["input_ids"] == second["input_ids"]).all())  # a new batch each step


@pytest.mark.slow
def test_quick_run_times_every_phase_and_async_refresh_blocks_less_than_sync(tmp_path):
    out = tmp_path / "summary.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_pretraining_step.py"), "--quick", "--work-dir",
               str(tmp_path), "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == summary
    assert not list(tmp_path.glob("pretraining-step-*"))  # the scratch directory is removed

    phases, settings = summary["phases"], summary["settings"]
    for key in PHASES:
        assert len(phases[key]["per_step_s"]) == settings["steps"]
        assert min(phases[key]["per_step_s"]) > 0 and phases[key]["median_s"] > 0
    assert sum(phases[key]["share"] for key in PHASES) == pytest.approx(1.0)
    assert phases["step"]["mean_s"] == pytest.approx(sum(phases[key]["mean_s"] for key in PHASES))
    assert 0 < phases["retrieval"]["share"] < phases["retrieval_and_inputs"]["share"] < 1
    for label in bench_pretraining_step.PHASES.values():
        assert f"| {label} |" in completed.stdout
    assert "retrieval per step (median):" in completed.stdout

    runs = {run["mode"]: run for run in summary["refresh"]}
    sync, asynchronous = runs["sync"], runs["async"]
    every = settings["refresh_every"]
    assert sync["steps"] == settings["sync_refreshes"] * every and sync["refreshes"] == settings["sync_refreshes"]
    assert sync["by_kind"]["due"]["calls"] == settings["sync_refreshes"]
    assert sync["mean_staleness"] == pytest.approx((every - 1) / 2)  # each index serves `every` steps, from 0
    assert asynchronous["failures"] == 0 and asynchronous["refreshes"] >= settings["async_swaps"]
    assert any(call["changed"] for call in asynchronous["calls"])  # a refreshed index was swapped in
    assert asynchronous["mean_staleness"] > sync["mean_staleness"]  # the worker takes steps to finish
    # A sync refresh re-encodes every block inside after_step; async only saves the tower, polls and swaps.
    assert asynchronous["blocked_max_s"] < sync["blocked_max_s"]
    assert asynchronous["blocked_max_s"] == max(call["seconds"] for call in asynchronous["calls"])
