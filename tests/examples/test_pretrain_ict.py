"""examples/pretrain_ict.py on invented biographies and a tiny retriever: the ICT loss goes down and the index it
builds is scored, a crashed run resumes to the weights of an uninterrupted one, two CPU processes (torchrun + gloo)
share their blocks as negatives, pre-split blocks and a shared tower work, bad inputs fail clearly."""

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from index_builder import BlockIndex
from modeling_realm import RealmRetriever
from modeling_realm.apps.synthetic import documents, invent_people, questions
from modeling_realm.pretraining import IctCollator, in_batch_loss
from tests.helpers import tiny_config
from tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "pretrain_ict.py"
NUM_PEOPLE = 40  # one block per biography, each of 3-4 sentences


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("pretrain_ict", SCRIPT)
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


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("pretrain_ict"))


def make_workdir(root: Path) -> Path:
    """Invented biographies (corpus.jsonl), questions with their gold document (qa.jsonl), and a tiny untrained
    RealmRetriever with one shared tower and a word-level vocabulary of the corpus (model/)."""
    people = invent_people(NUM_PEOPLE)
    docs, qa = documents(people), questions(people)
    vocab = sorted({w for d in docs for w in words(d["title"] + " " + d["text"])} |
                   {w for q in qa for w in words(q["question"])})
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocab]) + "\n")
    torch.manual_seed(0)
    # A wider initialisation than BERT's 0.02 makes the untrained tiny towers tell blocks apart from the start.
    model = RealmRetriever(tiny_config(vocab_size=len(vocab) + 5, max_position_embeddings=128,
                                       initializer_range=0.1))
    model.save_pretrained(root / "model")
    RealmTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "model")
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "qa.jsonl").write_text("".join(json.dumps({"question": q["question"], "answer": q["answer"],
                                                       "gold_doc_id": q["doc_id"]}) + "\n" for q in qa))
    return root


def cli(root: Path, output_dir: Path, *extra) -> list[str]:
    return ["--model", str(root / "model"), "--corpus", str(root / "corpus.jsonl"), "--output-dir", str(output_dir),
            "--per-device-train-batch-size", "8", "--query-max-length", "32", "--block-max-length", "128",
            "--learning-rate", "3e-3", "--seed", "0", *[str(x) for x in extra]]


def fixed_loss(directory: Path, root: Path) -> float:
    """ICT loss of the model in `directory` on all 40 blocks at once, with fixed draws (query always removed)."""
    model = RealmRetriever.from_pretrained(directory).eval()
    tokenizer = RealmTokenizerFast.from_pretrained(root / "model")
    rows = [{**json.loads(line), "block_id": i} for i, line in enumerate((root / "corpus.jsonl").open())]
    batch = IctCollator(tokenizer, 32, 128, keep_prob=0.0, seed=123)(rows)
    with torch.no_grad():
        out = model(**batch, return_dict=True)
        return in_batch_loss(out.query_embeddings, out.block_embeddings).loss.item()


def test_training_lowers_the_ict_loss_and_scores_the_new_index(script, workdir, tmp_path):
    metrics = script.main(cli(workdir, tmp_path, "--max-train-steps", 50, "--logging-steps", 10,
                              "--eval-file", workdir / "qa.jsonl", "--eval-at-start", "--eval-k", "1,5,100"))
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["completed_steps"] == 50 and metrics["num_candidates"] == 8 and metrics["num_processes"] == 1
    assert [r["step"] for r in metrics["history"]] == [10, 20, 30, 40, 50]
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in metrics["history"])
    before, after = fixed_loss(workdir / "model", workdir), fixed_loss(tmp_path / "final", workdir)
    assert after < before - 0.4, (before, after)  # ln(40) = 3.69 for a retriever that cannot tell blocks apart
    final = RealmRetriever.from_pretrained(tmp_path / "final")
    assert final.config.separate_query_embedder  # ORQA's default: separate towers from the same start
    assert (tmp_path / "final" / "tokenizer.json").is_file()
    initial = RealmRetriever.from_pretrained(workdir / "model")
    index = BlockIndex.load_from_disk(tmp_path / "index")
    assert len(index) == NUM_PEOPLE and index.check_compatible(final, warn=False)  # built by the trained tower
    assert BlockIndex.load_from_disk(tmp_path / "index_initial").check_compatible(initial, warn=False)
    for stage in ("initial", "final"):  # recall@100 is left out: only 40 blocks exist
        recall = metrics["eval"][stage]
        assert sorted(recall) == ["recall@1", "recall@5"] and 0 <= recall["recall@1"] <= recall["recall@5"] <= 100


def weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def test_resuming_a_crashed_run_reproduces_the_uninterrupted_run(script, workdir, tmp_path, monkeypatch):
    # 40 blocks, batches of 8, 2 batches per optimizer step: 3 steps an epoch (the last from one batch).
    options = ("--max-train-steps", 5, "--gradient-accumulation-steps", 2, "--checkpointing-steps", 2,
               "--logging-steps", 3)
    whole = script.main(cli(workdir, tmp_path / "whole", *options))
    assert whole["completed_steps"] == 5 and [r["step"] for r in whole["history"]] == [3, 5]

    calls = {"n": 0}

    def crash_on_sixth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # batch 6 is the first of epoch 1, after the checkpoint at step 2 (batch 4)
            raise RuntimeError("simulated crash")
        return in_batch_loss(*args, **kwargs)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(script, "in_batch_loss", crash_on_sixth_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        script.main(cli(workdir, crashed, *options))
    monkeypatch.setattr(script, "in_batch_loss", in_batch_loss)
    assert sorted(p.name for p in crashed.iterdir()) == ["step_2"]  # no half-written checkpoint left behind
    assert json.loads((crashed / "step_2" / "trainer_state.json").read_text())["batches_done"] == 4
    reset_accelerate()
    resumed = script.main(cli(workdir, crashed, *options, "--resume-from-checkpoint", "latest"))
    final = weights(tmp_path / "whole" / "final")
    for name, tensor in weights(crashed / "final").items():
        assert torch.equal(tensor, final[name]), name
    # The same logged losses, the step-3 window partly from before the crash.
    assert resumed["history"] == whole["history"]


def test_two_cpu_processes_share_their_blocks_as_negatives(workdir, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *cli(workdir, output_dir, "--per-device-train-batch-size", 4, "--max-train-steps", 3,
                    "--checkpointing-steps", 2, "--logging-steps", 1, "--eval-file", workdir / "qa.jsonl", "--cpu")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["completed_steps"] == 3
    assert metrics["num_candidates"] == 8  # every query scored against the 4 + 4 blocks of both processes
    assert sorted(p.name for p in (output_dir / "step_2").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    trained, initial = weights(output_dir / "final"), weights(workdir / "model")
    assert any(not torch.equal(trained[name], initial[name]) for name in initial if name.startswith("embedder."))
    assert set(metrics["eval"]["final"]) == {"recall@1", "recall@5", "recall@20"}
    assert len(BlockIndex.load_from_disk(output_dir / "index")) == NUM_PEOPLE


def test_pre_split_blocks_and_a_shared_tower(script, workdir, tmp_path):
    import datasets

    docs = [json.loads(line) for line in (workdir / "corpus.jsonl").open()]
    rows = {"title": [d["title"] for d in docs] + ["Sollon"], "text": [d["text"] for d in docs] + ["One sentence."]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "blocks")
    argv = cli(workdir, tmp_path / "out", "--max-train-steps", 2, "--towers", "shared")
    argv[argv.index("--corpus"):argv.index("--corpus") + 2] = ["--blocks", str(tmp_path / "blocks")]
    metrics = script.main(argv)
    assert metrics["completed_steps"] == 2
    assert metrics["num_blocks"] == NUM_PEOPLE + 1 and metrics["num_ict_blocks"] == NUM_PEOPLE  # one sentence: left out
    final = RealmRetriever.from_pretrained(tmp_path / "out" / "final")
    assert not final.config.separate_query_embedder
    trained, initial = weights(tmp_path / "out" / "final"), weights(workdir / "model")
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)
    # A checkpoint with separate towers cannot be trained as one shared tower.
    RealmRetriever(tiny_config(separate_query_embedder=True)).save_pretrained(tmp_path / "separate")
    reset_accelerate()
    with pytest.raises(ValueError, match="--towers shared"):
        script.main(argv[:1] + [str(tmp_path / "separate"), "--tokenizer", str(workdir / "model")] + argv[2:])


def test_bad_inputs_fail_with_clear_errors(script, workdir, tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        script.main(cli(workdir, tmp_path / "out", "--per-device-train-batch-size", 64))
    reset_accelerate()
    no_gold = tmp_path / "no_gold.jsonl"
    no_gold.write_text(json.dumps({"question": "where?", "answer": ["here"]}) + "\n")
    with pytest.raises(ValueError, match="gold passage"):
        script.main(cli(workdir, tmp_path / "out", "--eval-file", no_gold))
    reset_accelerate()
    with pytest.raises(FileNotFoundError, match="No blocks directory"):
        script.main(["--blocks", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out"),
                     "--model", str(workdir / "model")])
    reset_accelerate()
    with pytest.raises(FileNotFoundError, match="no step_N checkpoint"):
        script.main(cli(workdir, tmp_path / "out", "--resume-from-checkpoint", "latest"))
    for bad in (["--keep-prob", "2"], ["--eval-k", "1,x"], ["--max-train-steps", "0"]):
        with pytest.raises(SystemExit):
            script.main(cli(workdir, tmp_path / "out", *bad))
    assert not (tmp_path / "out" / "final").exists()


def test_a_sentence_encoder_starts_at_full_width_with_a_warning(script, workdir, tmp_path, caplog):
    from tests.modeling_realm.models.test_init_options import save_bert

    save_bert(tmp_path / "sentence", pooling="mean")
    argv = cli(workdir, tmp_path / "out", "--max-train-steps", 1, "--towers", "shared")
    argv[argv.index("--model") + 1] = str(tmp_path / "sentence")
    with caplog.at_level(logging.WARNING):
        assert script.main(argv)["completed_steps"] == 1
    assert "is a sentence encoder, already trained for retrieval: ICT measured no gain on it" in caplog.text
    final = RealmRetriever.from_pretrained(tmp_path / "out" / "final")
    assert (final.config.retriever_proj_size, final.config.retriever_pooling) == (32, "mean")  # identity, kept


def qa_cli(root: Path, index: Path, output_dir: Path, *extra) -> list[str]:
    return ["--model", str(root / "model"), "--qa-file", str(root / "qa.jsonl"), "--index", str(index),
            "--output-dir", str(output_dir), "--per-device-train-batch-size", "8", "--query-max-length", "32",
            "--block-max-length", "128", "--learning-rate", "3e-3", "--mining-blocks", "5", "--seed", "0",
            *[str(x) for x in extra]]


@pytest.fixture(scope="module")
def workdir_index(workdir, tmp_path_factory):
    """A Flat index of the biographies built with the untrained tiny model's block tower."""
    from modeling_realm.apps import build_index

    directory = tmp_path_factory.mktemp("qa_index") / "index"
    build_index.main([str(workdir / "corpus.jsonl"), "--model", str(workdir / "model"), "--output", str(directory),
                      "--quiet"])
    return directory


def pair_loss(directory: Path, root: Path, index: BlockIndex, pairs: list[dict]) -> float:
    """The supervised loss of the model in `directory` on fixed pairs (positives and hard negatives)."""
    from modeling_realm.openqa import RetrieverPairCollator

    model = RealmRetriever.from_pretrained(directory).eval()
    batch = RetrieverPairCollator(RealmTokenizerFast.from_pretrained(root / "model"), index, 32, 128)(pairs)
    with torch.no_grad():
        out = model(**batch, return_dict=True)
        return in_batch_loss(out.query_embeddings, out.block_embeddings).loss.item()


def test_qa_pairs_train_one_shared_tower_on_real_questions(script, workdir, workdir_index, tmp_path):
    from modeling_realm.openqa import load_qa_file, mine_retriever_pairs

    metrics = script.main(qa_cli(workdir, workdir_index, tmp_path, "--max-train-steps", 40, "--num-train-epochs", 20,
                                 "--logging-steps", 10, "--eval-file", workdir / "qa.jsonl", "--eval-at-start",
                                 "--eval-k", "1,5"))
    index = BlockIndex.load_from_disk(workdir_index)
    initial = RealmRetriever.from_pretrained(workdir / "model")
    tokenizer = RealmTokenizerFast.from_pretrained(workdir / "model")
    records = load_qa_file(workdir / "qa.jsonl")
    pairs, stats = mine_retriever_pairs(initial, tokenizer, index, records, num_blocks=5, progress=False)
    assert metrics["num_pairs"] == stats["pairs"] == len(pairs) and 8 <= len(pairs) <= len(records)
    assert metrics["completed_steps"] == 40
    assert 8 < metrics["num_candidates"] <= 16  # 8 positives and up to 8 hard negatives per query
    before, after = pair_loss(workdir / "model", workdir, index, pairs), pair_loss(tmp_path / "final", workdir,
                                                                                   index, pairs)
    assert after < before - 0.3, (before, after)
    final = RealmRetriever.from_pretrained(tmp_path / "final")
    assert not final.config.separate_query_embedder  # the --qa-file default: one shared tower
    assert BlockIndex.load_from_disk(tmp_path / "index").check_compatible(final, warn=False)
    assert metrics["eval"]["final"]["recall@5"] >= metrics["eval"]["initial"]["recall@5"]


def test_each_mode_has_its_own_defaults(script, workdir, workdir_index, tmp_path):
    qa = script.parse_args(["--qa-file", "qa.jsonl", "--index", "index", "--output-dir", "out"])
    assert (qa.towers, qa.per_device_train_batch_size, qa.learning_rate, qa.num_train_epochs) == ("shared", 16, 5e-5, 1)
    ict = script.parse_args(["--corpus", "corpus.jsonl", "--output-dir", "out"])
    assert (ict.towers, ict.per_device_train_batch_size, ict.learning_rate, ict.num_train_epochs) == \
        ("separate", 32, 1e-4, None)
    chosen = script.parse_args(["--qa-file", "qa.jsonl", "--index", "index", "--output-dir", "out", "--towers",
                                "separate", "--learning-rate", "1e-5"])
    assert (chosen.towers, chosen.learning_rate) == ("separate", 1e-5)


def test_qa_pairs_bad_inputs_fail_with_clear_errors(script, workdir, workdir_index, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.main(["--qa-file", str(workdir / "qa.jsonl"), "--output-dir", str(tmp_path / "out")])
    assert "--qa-file needs --index" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(cli(workdir, tmp_path / "out", "--index", workdir_index))
    assert "--index is used with --qa-file only" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"question": "who was born in paris?", "answer": ["nobody"],
                                     "passage_id": "no-such-passage"}) + "\n")
    with pytest.raises(ValueError, match="No question of .* has a positive block"):
        script.main(qa_cli(workdir, workdir_index, tmp_path / "out", "--max-train-steps", 1)[:2] +
                    ["--qa-file", str(elsewhere)] + qa_cli(workdir, workdir_index, tmp_path / "out")[4:])
    reset_accelerate()
    other = tmp_path / "other"
    torch.manual_seed(1)
    RealmRetriever(RealmRetriever.from_pretrained(workdir / "model").config).save_pretrained(other)
    argv = qa_cli(workdir, workdir_index, tmp_path / "stale", "--max-train-steps", 1, "--tokenizer", workdir / "model")
    argv[1] = str(other)
    with pytest.warns(UserWarning, match="stale embeddings"):
        script.main(argv)
    assert not (tmp_path / "out" / "final").exists()


def test_qa_pairs_from_a_bert_mine_with_the_towers_that_built_its_index(script, workdir, tmp_path, recwarn):
    from modeling_realm.apps import build_index
    from tests.modeling_realm.models.test_init_options import save_bert

    save_bert(tmp_path / "bert", pooling="cls")  # a plain BERT: its fresh projection and MLM head depend on a seed
    build_index.main([str(workdir / "corpus.jsonl"), "--model", str(tmp_path / "bert"), "--output",
                      str(tmp_path / "index"), "--quiet"])
    argv = qa_cli(workdir, tmp_path / "index", tmp_path / "out", "--max-train-steps", 1, "--seed", 7,
                  "--mining-blocks", 40)
    argv[1] = str(tmp_path / "bert")
    assert script.main(argv)["completed_steps"] == 1
    assert not [w for w in recwarn if "stale embeddings" in str(w.message)]  # the run's seed did not change them
