"""Kill-and-resume, stage by stage: each long-running command of the package is killed with SIGKILL at several
points (its whole process group, as a preempted machine would be), then what is on disk is checked and the run is
resumed.

Every kill point asserts the same three things:
- nothing half-written is loadable: each `step_N` checkpoint, index and index version on disk loads and verifies,
  and no final output exists before the run finished;
- resume loses at most one checkpoint interval (the checkpoint `latest` picks is the newest one due before the kill);
- the resumed run ends with what the uninterrupted run produced: the same weights and logged metrics (the same index
  for index building). The asynchronous refresh is not deterministic (the worker's timing decides when versions swap
  in), so there the resumed run must finish with loadable outputs and an index no older than its checkpoint's.

The table of kill points is `KILL_POINTS`; the README's troubleshooting section describes the behaviour.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from index_builder import BlockIndex
from modeling_realm.apps.build_index import main as build_index_cli
from modeling_realm.apps.synthetic import documents, invent_people
from modeling_realm.training import checkpoint_to_resume
from tests.examples import test_finetune_openqa, test_pretrain_ict, test_pretrain_realm

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEADLINE_S = 300
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------------------------ kill points
def exists(*names: str) -> Callable[[Path], bool]:
    """A kill condition: any of `names` (glob patterns under the output directory) exists."""
    return lambda out: any(next(out.glob(name), None) is not None for name in names)


@dataclass(frozen=True)
class KillPoint:
    stage: str
    name: str
    when: Callable[[Path], bool]  # send SIGKILL as soon as this holds for the output directory
    resumes_from: tuple[str, ...]  # checkpoints `latest` may pick: the newest due before the kill, or the one before


KILL_POINTS = [
    # index building: `realm-build-index` (resume = the same command again)
    KillPoint("index", "after the first embedding chunk", exists(".index.encoding/chunk-000000.npy"), ()),
    KillPoint("index", "while the index directory is written", exists(".index.tmp-*", "index"), ()),
    # ICT: 5 steps, checkpoints at steps 2 and 4
    KillPoint("ict", "right after the first checkpoint", exists("step_2"), ("step_2",)),
    KillPoint("ict", "while the second checkpoint is written", exists(".step_4.tmp", "step_4"), ("step_2", "step_4")),
    KillPoint("ict", "while the final model is written", exists(".final.tmp-*", "final"), ("step_4",)),
    # REALM with the synchronous refresh: 8 steps, refresh and checkpoint every 2
    KillPoint("realm", "right after the first checkpoint", exists("step_2"), ("step_2",)),
    KillPoint("realm", "while a refreshed index version is written", exists("index_versions/.v000003.*"),
              ("step_4",)),
    # fine-tuning: 2 epochs of 2 steps, a checkpoint every step
    KillPoint("finetune", "right after the first checkpoint", exists("step_1"), ("step_1",)),
    KillPoint("finetune", "while the best model is written", exists(".best.tmp-*", "best"), ("step_2",)),
    KillPoint("finetune", "while the third checkpoint is written", exists(".step_3.tmp", "step_3"),
              ("step_2", "step_3")),
]


def every(*conditions: Callable[[Path], bool]) -> Callable[[Path], bool]:
    return lambda out: all(condition(out) for condition in conditions)


def kill_when(command: list[str], out: Path, when: Callable[[Path], bool], log: Path) -> None:
    """Run `command` in a new session; SIGKILL its whole process group once `when(out)` holds."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=ENV,
                                   start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while not (out.exists() and when(out)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"finished before the kill point:\n{log.read_text()[-3000:]}"


def reset_accelerate():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ what is on disk
def safetensors_in(directory: Path) -> dict:
    """Every tensor of every .safetensors file under `directory` (loading fails on a truncated file)."""
    tensors = {}
    for path in sorted(directory.rglob("*.safetensors")):
        tensors.update({f"{path.relative_to(directory)}:{k}": v for k, v in load_file(str(path)).items()})
    return tensors


def assert_checkpoints_complete(out: Path) -> None:
    """Each step_N that exists is complete: its state is JSON and its weights load."""
    for checkpoint in out.glob("step_*"):
        json.loads((checkpoint / "trainer_state.json").read_text())
        assert safetensors_in(checkpoint), f"{checkpoint} holds no weights"


def assert_indices_complete(root: Path) -> None:
    """Each index directory that exists (not hidden staging) loads with its checksums verified."""
    for manifest in root.rglob("manifest.json"):
        if not any(part.startswith(".") for part in manifest.relative_to(root).parts):
            BlockIndex.load_from_disk(manifest.parent, verify=True)


def assert_resumes_from(out: Path, script, point: KillPoint) -> None:
    assert checkpoint_to_resume(out, "latest").name in point.resumes_from


def assert_same_weights(directory: Path, reference: Path) -> None:
    resumed, expected = safetensors_in(directory), safetensors_in(reference)
    assert resumed.keys() == expected.keys()
    for name, tensor in resumed.items():
        assert torch.equal(tensor, expected[name]), name


# ------------------------------------------------------------------------------------------------ stages
class Stage:
    """One command: its uninterrupted run (once per module), a killed run and the resume."""

    def __init__(self, tmp_path_factory):
        self.root = tmp_path_factory.mktemp(type(self).__name__.lower())
        self._whole = None

    def subdir(self, name: str) -> Path:
        (self.root / name).mkdir()
        return self.root / name

    def whole(self):
        if self._whole is None:
            self._whole = self.run(self.root / "whole")
        return self._whole


class IndexStage(Stage):
    def __init__(self, tmp_path_factory):
        super().__init__(tmp_path_factory)
        self.model = test_pretrain_realm.make_workdir(self.subdir("world")) / "retriever"
        corpus = documents(invent_people(240))
        self.corpus = self.root / "corpus.jsonl"
        self.corpus.write_text("".join(json.dumps(d) + "\n" for d in corpus))

    def argv(self, out: Path) -> list[str]:
        return [str(self.corpus), "--output", str(out / "index"), "--model", str(self.model), "--doc-id-field",
                "doc_id", "--chunk-size", "16", "--batch-size", "8", "--max-length", "64", "--quiet"]

    def run(self, out: Path):
        assert build_index_cli(self.argv(out)) == 0
        return BlockIndex.load_from_disk(out / "index")

    def check(self, out: Path, point: KillPoint) -> None:
        assert_indices_complete(out)
        if not (out / "index").exists():  # killed after the rename, the index is complete (checked above)
            self.run(out)  # the same command again resumes
        resumed, whole = BlockIndex.load_from_disk(out / "index", verify=True), self.whole()
        rows = range(whole.blocks.num_rows)
        assert resumed.blocks.num_rows == whole.blocks.num_rows
        np.testing.assert_array_equal(resumed.get_embeddings(rows), whole.get_embeddings(rows))
        assert resumed.blocks["text"][:] == whole.blocks["text"][:]
        assert not (out / ".index.encoding").exists(), "the finished build removes its encoding work directory"

    def command(self, out: Path) -> list[str]:
        return [sys.executable, "-m", "modeling_realm.apps.build_index", *self.argv(out)]


class ScriptStage(Stage):
    """An example training script: `cli` builds its arguments, `options` are the run's length and checkpoints."""

    module, test_module, options, final = "", None, (), "final"

    def __init__(self, tmp_path_factory):
        super().__init__(tmp_path_factory)
        self.workdir = self.test_module.make_workdir(self.subdir("work"))
        self.script = load_script(self.module)

    def argv(self, out: Path, *extra, options=None) -> list[str]:
        return self.test_module.cli(self.workdir, out, *(self.options if options is None else options), *extra)

    def run(self, out: Path, *extra, options=None) -> dict:
        reset_accelerate()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.script.main(self.argv(out, *extra, options=options))
        finally:
            torch.set_num_threads(threads)
            reset_accelerate()

    def command(self, out: Path, options=None) -> list[str]:
        return [sys.executable, str(EXAMPLES / f"{self.module}.py"), *self.argv(out, options=options)]

    def check(self, out: Path, point: KillPoint) -> None:
        assert_checkpoints_complete(out)
        assert_indices_complete(out)
        if (out / self.final).exists():  # killed after the final rename: it must be complete
            assert safetensors_in(out / self.final)
        assert_resumes_from(out, self.script, point)
        resumed = self.run(out, "--resume-from-checkpoint", "latest")
        whole = self.whole()
        assert resumed["history"] == whole["history"]
        assert_same_weights(out / self.final, self.root / "whole" / self.final)
        self.check_more(resumed, whole)

    def check_more(self, resumed: dict, whole: dict) -> None:
        """Stage-specific comparisons of the resumed and uninterrupted metrics."""


class IctStage(ScriptStage):
    module, test_module = "pretrain_ict", test_pretrain_ict
    options = ("--max-train-steps", 5, "--gradient-accumulation-steps", 2, "--checkpointing-steps", 2,
               "--logging-steps", 3)


class RealmStage(ScriptStage):
    module, test_module = "pretrain_realm", test_pretrain_realm
    options = ("--max-train-steps", 8, "--refresh-mode", "sync", "--refresh-every", 2, "--checkpointing-steps", 2,
               "--logging-steps", 4)

    def check_more(self, resumed: dict, whole: dict) -> None:
        assert resumed["index_version"] == whole["index_version"] == 4


class FinetuneStage(ScriptStage):
    module, test_module = "finetune_openqa", test_finetune_openqa
    options = ("--num-train-epochs", 2, "--gradient-accumulation-steps", 2, "--checkpointing-steps", 1)

    def check_more(self, resumed: dict, whole: dict) -> None:
        assert resumed["best"] == whole["best"]


STAGES = {"index": IndexStage, "ict": IctStage, "realm": RealmStage, "finetune": FinetuneStage}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    built = {}

    def get(name: str) -> Stage:
        if name not in built:
            built[name] = STAGES[name](tmp_path_factory)
        return built[name]

    return get


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS, ids=[f"{p.stage}: {p.name}" for p in KILL_POINTS])
def test_sigkill_then_resume(stages, point, tmp_path):
    stage = stages(point.stage)
    stage.whole()
    out = tmp_path / "killed"
    kill_when(stage.command(out), out, point.when, tmp_path / "killed.log")
    stage.check(out, point)


def test_the_table_covers_every_stage_at_two_points_or_more():
    counts = {stage: sum(p.stage == stage for p in KILL_POINTS) for stage in STAGES}
    assert min(counts.values()) >= 2, counts


# ------------------------------------------------------------------------------------------------ asynchronous refresh
# Long enough (a tiny step takes ~0.06 s) for the worker to start (~5-10 s of imports on a loaded machine) and
# write a version while training goes on.
ASYNC = ("--max-train-steps", 300, "--refresh-mode", "async", "--refresh-every", 2, "--checkpointing-steps", 10,
         "--logging-steps", 100)


def assert_versions_complete(versions: Path) -> None:
    """Every version directory loads, and latest.json (if any) names one of them."""
    assert_indices_complete(versions)
    latest = versions / "latest.json"
    if latest.exists():
        BlockIndex.load_from_disk(versions / json.loads(latest.read_text())["directory"], verify=True)


@pytest.mark.slow
def test_async_refresh_preempted_with_its_worker_then_resumed(stages, tmp_path):
    """The trainer and its refresh worker die together while the worker encodes; the resumed run finishes."""
    stage = stages("realm")
    out = tmp_path / "killed"
    worker_writing = every(exists("step_*"), exists("index_versions/.v00000*.encoding"))
    kill_when(stage.command(out, options=ASYNC), out, worker_writing, tmp_path / "killed.log")
    assert_checkpoints_complete(out)
    assert_versions_complete(out / "index_versions")
    checkpoint = checkpoint_to_resume(out, "latest")
    saved_version = json.loads((checkpoint / "trainer_state.json").read_text())["refresh"]["version"]
    resumed = stage.run(out, "--resume-from-checkpoint", "latest", options=ASYNC)
    assert resumed["completed_steps"] == 300 and [r["step"] for r in resumed["history"]] == [100, 200, 300]
    assert resumed["index_version"] >= saved_version
    assert_versions_complete(out / "index_versions")
    assert safetensors_in(out / "final")


def refresh_workers(versions: Path) -> list[int]:
    """Pids of the refresh worker processes writing into `versions` (Linux /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"modeling_realm.pretraining.refresh" in argv and str(versions).encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the worker process through Linux /proc")
def test_a_refresh_worker_killed_mid_write_is_logged_and_training_goes_on(stages, tmp_path):
    stage = stages("realm")
    out = tmp_path / "run"
    versions = out / "index_versions"
    killed = []
    with open(tmp_path / "run.log", "w") as log:
        process = subprocess.Popen(stage.command(out, options=ASYNC), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env=ENV, start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while not killed and process.poll() is None and time.monotonic() < deadline:
            if next(versions.glob(".v00000*.encoding"), None) is not None:  # a worker is writing a version
                for pid in refresh_workers(versions):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.002)
        assert killed, "no refresh worker was caught writing"
        assert_versions_complete(versions)  # right after the kill: no half-written version is loadable
        process.wait(timeout=DEADLINE_S)
    text = (tmp_path / "run.log").read_text()
    assert process.returncode == 0, text[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completed_steps"] == 300 and metrics["refresh_failures"] >= 1
    assert "failed with exit code -9" in text and "training continues on index version" in text
    assert text.count("Index refresh worker started") >= 2, "the next refresh starts after the failed one"
    assert_versions_complete(versions)
    assert safetensors_in(out / "final")
