"""examples/finetune_openqa.py on a tiny model and index: the loss goes down, the best model is kept, a crashed run
resumes to the weights of an uninterrupted one, two CPU processes (torchrun + gloo) train together, bad inputs fail
clearly."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from index_builder import BlockIndex
from modeling_realm import RealmForOpenQA
from modeling_realm.openqa.batches import training_batch
from modeling_realm.openqa.metrics import evaluate_predictions
from tests.helpers import PARITY, VOCAB
from tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "finetune_openqa.py"
FIXTURE = PARITY / "tiny" / "RealmForOpenQA"

# Every answer occurs in the fixture's block texts and is made of words in the fixture vocabulary.
TRAIN = [
    ("who is the pioneer in modern computer science?", ["alan turing"]),
    ("what is the capital of france?", ["paris"]),
    ("where is the eiffel tower?", ["paris", "france"]),
    ("what is the river in paris?", ["seine"]),
    ("what is the capital city of england?", ["london"]),
    ("who was a british mathematician?", ["alan turing"]),
]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("finetune_openqa", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; accelerate keeps process-wide singletons, so reset them."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def write_jsonl(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("finetune_openqa"))


def make_workdir(root: Path) -> Path:
    """A tiny RealmForOpenQA (dropout 0) with its tokenizer, a Flat BlockIndex of its blocks, train/dev jsonl."""
    cases = json.loads((FIXTURE / "openqa_cases.json").read_text())
    model = RealmForOpenQA.from_pretrained(FIXTURE, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(root / "model")
    RealmTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(root / "model")
    BlockIndex.from_arrays(model.block_emb.numpy(), cases["block_texts"], progress=False).save_to_disk(root / "index")
    write_jsonl(root / "train.jsonl", TRAIN)
    write_jsonl(root / "dev.jsonl", [(c["question"], c["answers"]) for c in cases["questions"]])
    return root


def cli(root: Path, output_dir: Path, *extra) -> list[str]:
    return ["--model", str(root / "model"), "--index", str(root / "index"), "--train-file", str(root / "train.jsonl"),
            "--dev-file", str(root / "dev.jsonl"), "--output-dir", str(output_dir), "--learning-rate", "1e-3",
            "--per-device-train-batch-size", "2", "--seed", "0", *[str(x) for x in extra]]


def load(directory: Path, root: Path):
    index = BlockIndex.load_from_disk(root / "index")
    return RealmForOpenQA.from_pretrained(directory, index=index).eval(), RealmTokenizerFast.from_pretrained(directory)


def test_training_lowers_the_loss_and_keeps_the_best_model(script, workdir, tmp_path):
    # Retrieving all 6 blocks in training lets the retriever loss see every answer-holding block.
    metrics = script.main(cli(workdir, tmp_path, "--num-train-epochs", 3, "--num-blocks", 6, "--learning-rate", 3e-3))
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["completed_steps"] == 9 and [r["epoch"] for r in metrics["history"]] == [0, 1, 2]
    # The loss on fixed inputs (the untrained model's retrieval of all 6 blocks for every training question).
    before, tokenizer = load(workdir / "model", workdir)
    questions, answers = [q for q, _ in TRAIN], [a for _, a in TRAIN]
    batch = training_batch(before, tokenizer, questions, answers, num_blocks=6)
    after, _ = load(tmp_path / "final", workdir)
    with torch.no_grad():
        out_before, out_after = before(**batch), after(**batch)
    assert out_after.loss < 0.8 * out_before.loss, (out_before.loss, out_after.loss)
    assert out_after.retriever_loss.mean() < out_before.retriever_loss.mean()
    assert out_after.reader_loss.mean() < out_before.reader_loss.mean()
    # best/ holds the first epoch with the highest dev exact match, and scores what was recorded for it.
    scores = [r["dev_exact_match"] for r in metrics["history"]]
    best = metrics["history"][scores.index(max(scores))]
    assert metrics["best"] == best == json.loads((tmp_path / "best" / "metrics.json").read_text())
    model, _ = load(tmp_path / "best", workdir)
    dev = [json.loads(line) for line in (workdir / "dev.jsonl").read_text().splitlines()]
    predictions = [a["answer"] if a else "" for a in model.answer([d["question"] for d in dev])]
    rescored = evaluate_predictions(predictions, [d["answer"] for d in dev])
    assert rescored["exact_match"] == pytest.approx(best["dev_exact_match"])


def weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def test_resuming_a_crashed_run_reproduces_the_uninterrupted_run(script, workdir, tmp_path, monkeypatch):
    # 6 questions, batches of 2, 2 batches per optimizer step: 2 steps an epoch (the second from one batch).
    options = ("--num-train-epochs", 2, "--gradient-accumulation-steps", 2, "--checkpointing-steps", 1)
    whole = script.main(cli(workdir, tmp_path / "whole", *options))
    assert whole["completed_steps"] == 4
    assert [json.loads((tmp_path / "whole" / f"step_{n}" / "trainer_state.json").read_text())["batches_done"]
            for n in (1, 2, 3)] == [2, 3, 2]  # step_2 ends epoch 0 before its evaluation; step_3 is mid-epoch 1

    calls = {"n": 0}

    def crash_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return training_batch(*args, **kwargs)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(script, "training_batch", crash_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        script.main(cli(workdir, crashed, *options))
    monkeypatch.setattr(script, "training_batch", training_batch)
    assert sorted(p.name for p in crashed.iterdir()) == ["step_1"]  # no half-written checkpoint left behind
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    resumed = script.main(cli(workdir, crashed, *options, "--resume-from-checkpoint", "latest"))
    final = weights(tmp_path / "whole" / "final")
    for name, tensor in weights(crashed / "final").items():
        assert torch.equal(tensor, final[name]), name
    assert resumed["completed_steps"] == 4 and resumed["best"] == whole["best"]
    assert resumed["history"] == whole["history"]  # the same losses (epoch 0's partly from the checkpoint) and scores

    # A checkpoint taken at the very end of an epoch (before its evaluation) resumes too, from an explicit path.
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "whole" / "step_2", again / "step_2")
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    script.main(cli(workdir, again, *options, "--resume-from-checkpoint", again / "step_2"))
    for name, tensor in weights(again / "final").items():
        assert torch.equal(tensor, final[name]), name


def test_two_cpu_processes_under_torchrun(workdir, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *cli(workdir, output_dir, "--per-device-train-batch-size", 1, "--num-train-epochs", 1,
                    "--checkpointing-steps", 2, "--cpu")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["completed_steps"] == 3  # 6 questions split over 2 processes, 1 each per step
    assert sorted(p.name for p in (output_dir / "step_2").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    assert (output_dir / "best" / "model.safetensors").is_file() and (output_dir / "best" / "tokenizer.json").is_file()
    assert metrics["best"]["dev_exact_match"] == metrics["history"][0]["dev_exact_match"]
    model, _ = load(output_dir / "best", workdir)
    assert model.answer("what is the capital of france?")["answer"]


def test_regex_answers_from_a_saved_dataset(script, workdir, tmp_path):
    import datasets

    patterns = [r"alan\s+turing", "par+is", "paris|france", "seine", "london", "alan turing|turing"]
    rows = {"question": [q for q, _ in TRAIN], "answer": [[p] for p in patterns]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "train")
    argv = cli(workdir, tmp_path / "out", "--match", "regex", "--max-train-steps", 2)
    argv[argv.index("--train-file") + 1] = str(tmp_path / "train")
    metrics = script.main(argv)
    assert metrics["completed_steps"] == 2 and (tmp_path / "out" / "best" / "model.safetensors").is_file()
    trained, initial = weights(tmp_path / "out" / "final"), weights(workdir / "model")
    assert any(not torch.equal(trained[name], initial[name]) for name in initial if name.startswith("embedder."))


def test_bad_inputs_fail_with_clear_errors(script, workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="No QA"):
        script.main(cli(workdir, tmp_path / "out") + ["--train-file", str(tmp_path / "missing.jsonl")])
    empty = write_jsonl(tmp_path / "empty.jsonl", [("who is alan turing?", [])])
    with pytest.raises(ValueError, match="non-empty list of answer"):
        script.main(cli(workdir, tmp_path / "out") + ["--train-file", str(empty)])
    bad_regex = write_jsonl(tmp_path / "regex.jsonl", [("who?", ["(unclosed"])])
    with pytest.raises(ValueError, match="does not compile"):
        script.main(cli(workdir, tmp_path / "out", "--match", "regex") + ["--train-file", str(bad_regex)])
    import datasets

    datasets.Dataset.from_dict({"question": ["who?"], "answers": [["x"]]}).save_to_disk(tmp_path / "wrong_column")
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\].*--answer-field"):
        script.main(cli(workdir, tmp_path / "out") + ["--train-file", str(tmp_path / "wrong_column")])
    with pytest.raises(FileNotFoundError, match="no step_N checkpoint"):
        script.main(cli(workdir, tmp_path / "out", "--resume-from-checkpoint", "latest"))
    with pytest.raises(SystemExit):
        script.main(cli(workdir, tmp_path / "out", "--checkpointing-steps", "often"))


@pytest.mark.filterwarnings("ignore:`log_with=:UserWarning")
def test_report_to_a_missing_tracker_fails_before_training(script, workdir, tmp_path):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here, so --report-to tensorboard is valid")
    with pytest.raises(ValueError, match="no such tracker is installed"):
        script.main(cli(workdir, tmp_path / "out", "--report-to", "tensorboard"))
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.parametrize("pooling", ["mean", None])
def test_a_new_model_from_a_bert_starts_with_reading_comprehension(script, workdir, tmp_path, monkeypatch, recwarn,
                                                                  pooling):
    import datasets

    from index_builder import build_index
    from modeling_realm import load_retriever
    from tests.modeling_realm.models.test_init_options import save_bert

    # a sentence encoder (mean pooling) keeps its space (identity projection); a plain BERT gets a random 128-d one
    save_bert(tmp_path / "bert", pooling=pooling)
    cases = json.loads((FIXTURE / "openqa_cases.json").read_text())
    tokenizer = RealmTokenizerFast.from_pretrained(tmp_path / "bert")
    build_index(datasets.Dataset.from_dict({"title": [""] * len(cases["block_texts"]), "text": cases["block_texts"]}),
                load_retriever(str(tmp_path / "bert")), tokenizer, tmp_path / "index", progress=False)
    reads = []

    def recording(*args, **kwargs):
        reads.append(kwargs.get("read", "retrieved"))
        return training_batch(*args, **kwargs)

    monkeypatch.setattr(script, "training_batch", recording)
    argv = cli(workdir, tmp_path / "out", "--max-train-steps", 3, "--comprehension-steps", 2, "--reader-beam-size", 2,
               "--searcher-beam-size", 4, "--reader-seq-len", 48, "--num-blocks", 6)  # every answer found
    argv[argv.index("--model") + 1], argv[argv.index("--index") + 1] = str(tmp_path / "bert"), str(tmp_path / "index")
    metrics = script.main(argv)
    assert metrics["completed_steps"] == 3 and reads == ["answer_block", "answer_block", "retrieved"]
    index = BlockIndex.load_from_disk(tmp_path / "index")
    model = RealmForOpenQA.from_pretrained(tmp_path / "out" / "final", index=index)
    assert (model.config.reader_beam_size, model.config.searcher_beam_size, model.config.reader_seq_len) == (2, 4, 48)
    expected = (32, "mean") if pooling else (128, "cls")
    assert (model.config.retriever_proj_size, model.config.retriever_pooling) == expected
    assert model.answer("what is the capital of france?")["doc_id"] is not None
    # the question tower is the one whose block tower built the index (same seed as realm-build-index)
    assert not [w for w in recwarn if "weights differ" in str(w.message)]


def test_a_comprehension_batch_without_answers_still_trains_every_process(script, workdir):
    from types import SimpleNamespace

    model, tokenizer = load(workdir / "model", workdir)
    run = SimpleNamespace(args=SimpleNamespace(comprehension_steps=5, match="string", num_blocks=6),  # all blocks
                          state={"completed_steps": 0}, tokenizer=tokenizer)
    answered = script.reading_batch(run, model, {"questions": ["what is the capital of france?"],
                                                 "answers": [["paris"]]})
    assert answered["reader_input_ids"].shape[1] == 1  # reading comprehension: one block
    # No block holds the answer: ORQA's batch (a forward and backward pass, a zero loss) instead of none at all,
    # so that under DDP no process skips a step the others take.
    unanswered = script.reading_batch(run, model, {"questions": ["what is the capital of france?"],
                                                   "answers": [["london paris seine"]]})
    assert unanswered["reader_input_ids"].shape[1] == model.config.reader_beam_size > 1
    assert not unanswered["has_answers"].any()
    run.state["completed_steps"] = 5  # past the comprehension steps: ORQA's reading
    assert script.reading_batch(run, model, {"questions": ["what is the capital of france?"],
                                             "answers": [["paris"]]})["reader_input_ids"].shape[1] == \
        model.config.reader_beam_size


def test_the_question_tower_learns_at_its_own_rate(script, workdir, tmp_path):
    script.main(cli(workdir, tmp_path / "frozen", "--max-train-steps", 2, "--question-tower-learning-rate", 0))
    script.main(cli(workdir, tmp_path / "slow", "--max-train-steps", 2, "--question-tower-learning-rate", 1e-5))
    initial = weights(workdir / "model")
    frozen, slow = weights(tmp_path / "frozen" / "final"), weights(tmp_path / "slow" / "final")
    tower = [name for name in initial if name.startswith("embedder.") and ".cls.predictions." not in name]
    assert tower and all(torch.equal(frozen[name], initial[name]) for name in tower)
    assert any(not torch.equal(frozen[name], initial[name]) for name in initial if name.startswith("reader."))
    moved = {name: (slow[name] - initial[name]).abs().max().item() for name in tower}
    assert 0 < max(moved.values()) < 1e-3  # two steps of Adam at 1e-5 move a weight by at most ~2e-5
    with pytest.raises(SystemExit):
        script.main(cli(workdir, tmp_path / "bad", "--question-tower-learning-rate", -1))
