"""realm-convert-tf-checkpoint: a TF checkpoint -> a safetensors model directory that from_pretrained reads."""

import json
import shutil

import pytest
import torch

from modeling_realm import RealmEmbedder, RealmReader
from modeling_realm.apps.convert_tf_checkpoint import main
from modeling_realm.models.tf_checkpoint import open_checkpoints
from tests.helpers import FIXTURES, VOCAB
from tests.modeling_realm.models.test_tf_checkpoint import check_outputs
from tests.tf_bundle_writer import write_checkpoint
from tokenization import RealmTokenizerFast

TF = FIXTURES / "tf_checkpoints"


def convert(output, *extra):
    return main([str(TF / "orqa"), "--model-type", "reader", "--output", str(output), "--config",
                 str(TF / "orqa" / "config.json"), "--quiet", *extra])


def test_converted_directory_reloads_with_the_same_outputs(tmp_path, capsys):
    output = tmp_path / "orqa-reader"
    assert convert(output, "--vocab", str(VOCAB)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "RealmReader" and summary["output"] == str(output)
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".*"))  # no staging directory left behind
    model = RealmReader.from_pretrained(output).eval()
    check_outputs(model, "orqa")
    reference = RealmReader.from_tf_checkpoint(TF / "orqa", config=model.config)
    for (name, saved), (_, loaded) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(saved, loaded), name


def test_an_existing_output_is_kept_without_overwrite(tmp_path, capsys):
    output = tmp_path / "model"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        convert(output)
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert(output, "--overwrite")
    assert "is not a model directory; refusing to replace it" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "mine"


def test_a_failed_conversion_leaves_nothing(tmp_path):
    weights = {n: h.read(n) for n, h in open_checkpoints(TF / "orqa").items() if n != "reader/dense_1/bias"}
    prefix = write_checkpoint(tmp_path / "broken" / "model.ckpt", weights)
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="lacks 1 weights RealmReader needs"):
        main([str(prefix), "--model-type", "reader", "--output", str(output), "--config",
              str(TF / "orqa" / "config.json"), "--quiet"])
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--model-type" in text and "encoded/encoded.ckpt" in text and "TensorFlow is not needed" in text


def test_a_tf_hub_module_converts_with_its_vocabulary(tmp_path, capsys):
    """A TF-Hub module directory (variables/variables.*, assets/vocab.txt), as google released the embedder."""
    module = tmp_path / "embedder"
    (module / "variables").mkdir(parents=True)
    (module / "assets").mkdir()
    for path in (TF / "embedder").glob("model.ckpt.*"):
        shutil.copy(path, module / "variables" / path.name.replace("model.ckpt", "variables"))
    shutil.copy(VOCAB, module / "assets" / "vocab.txt")
    output = tmp_path / "realm-embedder"
    main([str(module), "--model-type", "embedder", "--output", str(output), "--config",
          str(TF / "embedder" / "config.json"), "--quiet"])
    assert json.loads(capsys.readouterr().out)["tokenizer"] == str(module / "assets" / "vocab.txt")
    check_outputs(RealmEmbedder.from_pretrained(output).eval(), "embedder")
    assert RealmTokenizerFast.from_pretrained(output).tokenize("paris") == ["paris"]
