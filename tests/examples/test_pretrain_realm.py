"""examples/pretrain_realm.py on invented biographies with a tiny retriever and encoder: the marginal MLM loss goes
down on a fixed batch while the index is refreshed, a crashed run resumes to the weights and logs of an
uninterrupted one (sync and none refresh; SIGKILL at several points is in tests/test_kill_and_resume.py), the async
mode trains while its worker runs, two CPU processes (torchrun + gloo) train together with the async refresh, and
bad inputs fail clearly."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from index_builder import BlockIndex
from modeling_realm import RealmKnowledgeAugEncoder, RealmRetriever
from modeling_realm.pretraining.realm import (
    MaskedQueryCollator,
    RealmPretrainingModel,
    pretraining_inputs,
)
from modeling_realm.retrieval import retrieve_blocks
from tests.modeling_realm.pretraining.test_realm import make_world
from tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "pretrain_realm.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("pretrain_realm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy shared CPU spinning threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; accelerate keeps process-wide singletons, so reset them."""
    yield
    reset_accelerate()


def reset_accelerate():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("pretrain_realm"))


def make_workdir(root: Path) -> Path:
    """retriever/ and encoder/ (tiny, dropout 0, with the word-level tokenizer) and index/ (their blocks)."""
    world = make_world(root)
    world["retriever"].save_pretrained(root / "retriever", tokenizer=world["tokenizer"])
    world["encoder"].save_pretrained(root / "encoder", tokenizer=world["tokenizer"])
    return root


def cli(root: Path, output_dir: Path, *extra) -> list[str]:
    return ["--index", str(root / "index"), "--retriever", str(root / "retriever"), "--encoder", str(root / "encoder"),
            "--output-dir", str(output_dir), "--per-device-train-batch-size", "4", "--top-k", "4",
            "--query-max-length", "24", "--block-max-length", "64", "--encoder-max-length", "96",
            "--salient-backend", "regex", "--learning-rate", "3e-3", "--warmup-ratio", "0", "--seed", "0",
            *[str(x) for x in extra]]


def load_model(directory: Path) -> RealmPretrainingModel:
    return RealmPretrainingModel(RealmRetriever.from_pretrained(directory / "retriever"),
                                 RealmKnowledgeAugEncoder.from_pretrained(directory / "encoder")).eval()


def fixed_loss(directory: Path, inputs: dict) -> float:
    with torch.no_grad():
        return load_model(directory)(**inputs).loss.item()


def weights(directory: Path) -> dict:
    tensors = {}
    for name in ("retriever", "encoder"):
        tensors.update({f"{name}.{k}": v for k, v in load_file(str(directory / name / "model.safetensors")).items()})
    return tensors


def test_training_lowers_the_loss_on_a_fixed_batch_while_refreshing(script, workdir, tmp_path):
    metrics = script.main(cli(workdir, tmp_path, "--max-train-steps", 20, "--refresh-mode", "sync",
                              "--refresh-every", 3, "--logging-steps", 1))
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["completed_steps"] == 20 and metrics["refreshes"] == 6 and metrics["index_version"] == 6
    history = metrics["history"]
    assert [r["step"] for r in history] == list(range(1, 21))
    assert [r["index_staleness"] for r in history] == [step % 3 for step in range(1, 21)]
    assert [r["index_version"] for r in history] == [step // 3 for step in range(1, 21)]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["retrieval_utility"]])).all() for r in history)
    # The final index is the step-18 block tower's, and the final models load and share the tokenizer.
    assert Path(metrics["index_directory"]) == tmp_path / "index_versions" / "v000006"
    assert (tmp_path / "final" / "encoder" / "tokenizer.json").is_file()
    # Loss on one fixed batch (salient masks, the initial index's retrievals) for the initial and trained models.
    tokenizer = RealmTokenizerFast.from_pretrained(workdir / "retriever")
    index = BlockIndex.load_from_disk(workdir / "index")
    rows = [{**index.get_blocks([i])[0]} for i in range(8)]
    batch = MaskedQueryCollator(tokenizer, "salient", 24, seed=123, salient_backend="regex")(rows)
    initial = load_model(workdir)
    inputs, _ = pretraining_inputs(initial.retriever, tokenizer, batch, functools.partial(retrieve_blocks, index),
                                   4, 64, 96)
    before, after = fixed_loss(workdir, inputs), fixed_loss(tmp_path / "final", inputs)
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("mode", ["sync", "none"])
def test_resuming_a_crashed_run_reproduces_the_uninterrupted_run(script, workdir, tmp_path, monkeypatch, mode):
    # 2 batches per optimizer step; a sync refresh at steps 2 and 4, checkpoints at steps 2 and 4.
    options = ("--max-train-steps", 5, "--gradient-accumulation-steps", 2, "--refresh-mode", mode,
               "--refresh-every", 2, "--checkpointing-steps", 2, "--logging-steps", 3)
    whole = script.main(cli(workdir, tmp_path / "whole", *options))
    assert whole["completed_steps"] == 5 and [r["step"] for r in whole["history"]] == [3, 5]
    training_step = script.training_step
    calls = {"n": 0}

    def crash_on_seventh_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # the first batch of step 4, after the checkpoint (and refresh) of step 2
            raise RuntimeError("simulated crash")
        return training_step(*args, **kwargs)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(script, "training_step", crash_on_seventh_batch)
    reset_accelerate()
    with pytest.raises(RuntimeError, match="simulated crash"):
        script.main(cli(workdir, crashed, *options))
    monkeypatch.setattr(script, "training_step", training_step)
    assert sorted(p.name for p in crashed.glob("step_*")) == ["step_2"]  # no half-written checkpoint left behind
    state = json.loads((crashed / "step_2" / "trainer_state.json").read_text())
    assert state["batches_done"] == 4 and state["refresh"]["version"] == (1 if mode == "sync" else 0)
    reset_accelerate()
    resumed = script.main(cli(workdir, crashed, *options, "--resume-from-checkpoint", "latest"))
    final = weights(tmp_path / "whole" / "final")
    for name, tensor in weights(crashed / "final").items():
        assert torch.equal(tensor, final[name]), name
    assert resumed["history"] == whole["history"]  # the same losses, RU and staleness, the step-3 window partly
    assert resumed["index_version"] == whole["index_version"] == (2 if mode == "sync" else 0)


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun_with_async_refresh(workdir, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *cli(workdir, output_dir, "--max-train-steps", 4, "--refresh-mode", "async", "--refresh-every", 2,
                    "--checkpointing-steps", 2, "--logging-steps", 2, "--cpu")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["completed_steps"] == 4 and metrics["refresh_failures"] == 0
    assert sorted(p.name for p in (output_dir / "step_2").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    assert (output_dir / "index_versions" / "worker-v1.log").is_file()  # started by the main process at step 2
    trained, initial = weights(output_dir / "final"), weights(workdir)
    for prefix in ("retriever.query_embedder.", "retriever.embedder.", "encoder.realm."):
        assert any(not torch.equal(trained[n], initial[n]) for n in initial if n.startswith(prefix)), prefix


def test_async_refresh_trains_while_the_worker_encodes(script, workdir, tmp_path, monkeypatch):
    from modeling_realm.pretraining import refresh

    class SavedAtOnce(refresh.TowerSnapshot):
        """The tower snapshot saved before training goes on, so the worker of step 1 starts at the next step's poll
        however slow the machine (otherwise 3 short steps can end before the copy is saved, and it is dropped)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.join()

    monkeypatch.setattr(refresh, "TowerSnapshot", SavedAtOnce)
    metrics = script.main(cli(workdir, tmp_path, "--max-train-steps", 3, "--refresh-mode", "async",
                              "--refresh-every", 1, "--logging-steps", 1, "--masking", "random_span"))
    assert metrics["completed_steps"] == 3 and metrics["refresh_failures"] == 0
    # The worker of step 1 started; training never waited for it (it is stopped at the end if still busy).
    assert (tmp_path / "index_versions" / "worker-v1.log").is_file()
    versions = [r["index_version"] for r in metrics["history"]]
    assert versions == sorted(versions) and all(r["index_staleness"] >= 0 for r in metrics["history"])
    assert not list((tmp_path / "index_versions" / "towers").iterdir())
    assert not list((tmp_path / "index_versions").glob(".v*"))  # a stopped worker leaves no partial version


def test_bad_inputs_fail_with_clear_errors(script, workdir, tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        script.main(cli(workdir, tmp_path / "out", "--per-device-train-batch-size", 1000))
    reset_accelerate()
    with pytest.raises(FileNotFoundError, match="no step_N checkpoint"):
        script.main(cli(workdir, tmp_path / "out", "--resume-from-checkpoint", "latest"))
    reset_accelerate()
    from transformers import GPT2Config

    GPT2Config().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="REALM encoder checkpoint"):
        script.main(cli(workdir, tmp_path / "out") + ["--encoder", str(tmp_path / "gpt2")])
    for bad in (["--top-k", "1"], ["--refresh-every", "0"], ["--refresh-mode", "sometimes"],
                ["--query-max-length", "200"]):
        with pytest.raises(SystemExit):
            script.main(cli(workdir, tmp_path / "out", *bad))
    assert not (tmp_path / "out" / "final").exists()
