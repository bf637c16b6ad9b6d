"""google's original TensorFlow checkpoints: read without TensorFlow, and the same outputs as transformers 4.57.6's
`load_tf_weights_in_realm` on the same files (tests/fixtures/make_tf_checkpoint_fixtures.py wrote both)."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_realm import (
    RealmConfig,
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmRetriever,
    RealmScorer,
)
from modeling_realm.models.crc32c import bytewise_update, crc32c
from modeling_realm.models.tf_bundle import TFCheckpoint
from modeling_realm.models.tf_checkpoint import open_checkpoints, resolve_checkpoint
from tests.helpers import FIXTURES, assert_close
from tests.tf_bundle_writer import write_checkpoint

TF = FIXTURES / "tf_checkpoints"
CASES = {"RealmEmbedder": "embedder", "RealmScorer": "scorer", "RealmKnowledgeAugEncoder": "encoder",
         "RealmReader": "orqa", "RealmForOpenQA": "orqa"}


def config_of(case: str) -> RealmConfig:
    return RealmConfig(**json.loads((TF / case / "config.json").read_text()))


def io_of(case: str, class_name: str):
    tensors = load_file(str(TF / case / f"{class_name}.io.safetensors"))
    inputs = {k[3:]: v for k, v in tensors.items() if k.startswith("in.")}
    return inputs, {k[4:]: v for k, v in tensors.items() if k.startswith("out.")}


def load(model_class, **kwargs):
    case = CASES[model_class.__name__]
    return model_class.from_tf_checkpoint(TF / case, config=config_of(case), **kwargs)


def check_outputs(model, case):
    """The model's outputs on the fixture's inputs against what 4.57.6 computed (atol 1e-5); the max differences."""
    name = type(model).__name__
    inputs, expected = io_of(case, name)
    differences = {}
    with torch.no_grad():
        if name == "RealmForOpenQA":
            reader_inputs, _ = io_of(case, "RealmReader")
            question = model.embedder(**inputs).projected_score
            read = model.reader(**reader_inputs)
            actual = {"question_projection": question, "block_emb": model.block_emb}
            actual.update({k: getattr(read, k[len("reader_"):]) for k in expected if k.startswith("reader_")})
        else:
            out = model(**inputs, **({"output_hidden_states": True} if name == "RealmEmbedder" else {}))
            actual = {k: (getattr(out, k.split(".")[0])[int(k.split(".")[1])] if "." in k else getattr(out, k))
                      for k in expected}
    for key, value in expected.items():
        assert_close(actual[key], value, what=f"{name}.{key}")
        differences[key] = (actual[key].float() - value.float()).abs().max().item()
    return differences


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader,
                                         RealmForOpenQA], ids=lambda c: c.__name__)
def test_outputs_match_4x_loaded_from_the_same_tf_files(model_class):
    model = load(model_class)
    assert not model.training
    check_outputs(model, CASES[model_class.__name__])


@pytest.mark.parametrize("case", ["embedder", "scorer", "encoder", "orqa"])
def test_index_lists_what_tensorflow_lists(case):
    """Names and shapes as tf.train.list_variables reported them, and every tensor's CRC-32C checks out."""
    checkpoint = TFCheckpoint(resolve_checkpoint(TF / case))
    listed = {name: tuple(shape) for name, shape in json.loads((TF / case / "variables.json").read_text())}
    assert checkpoint.shapes() == listed
    for name in checkpoint.entries:
        checkpoint.read(name)  # raises on a checksum mismatch
    if case in ("encoder", "orqa"):
        assert checkpoint.read("global_step") == 1234


def test_crc32c_matches_the_standard_and_the_bytewise_table():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(0)
    for size in (0, 1, 4095, 70_000, (1 << 20) + 13):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32c(data) == bytewise_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF, size


def test_paths_a_user_may_give(tmp_path):
    prefix = TF / "orqa" / "model.ckpt"
    assert resolve_checkpoint(TF / "orqa") == prefix
    assert resolve_checkpoint(prefix) == prefix
    assert resolve_checkpoint(TF / "orqa" / "model.ckpt.index") == prefix
    hub_module = tmp_path / "embedder"
    shutil.copytree(TF / "embedder", hub_module / "variables")
    for path in (hub_module / "variables").glob("model.ckpt*"):
        path.rename(path.with_name(path.name.replace("model.ckpt", "variables")))
    (hub_module / "variables" / "checkpoint").unlink()
    assert resolve_checkpoint(hub_module) == hub_module / "variables" / "variables"


def test_from_pretrained_from_tf_is_from_tf_checkpoint():
    model = RealmReader.from_pretrained(TF / "orqa", from_tf=True, config=config_of("orqa"))
    check_outputs(model, "orqa")
    with pytest.raises(TypeError, match="takes only config and verify_checksums"):
        RealmReader.from_pretrained(TF / "orqa", from_tf=True, revision="main")


def test_a_scorer_checkpoint_loads_as_a_retriever():
    retriever = RealmRetriever.from_tf_checkpoint(TF / "scorer", config=config_of("scorer"))
    scorer = load(RealmScorer)
    inputs, _ = io_of("scorer", "RealmScorer")
    with torch.no_grad():
        expected = scorer(**inputs).query_score
        actual = retriever.embed_queries(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    assert_close(actual, expected, atol=0)


def test_block_emb_from_a_second_checkpoint(tmp_path):
    """google's open-QA models keep block_emb in encoded/encoded.ckpt: the two checkpoints are merged."""
    holders = open_checkpoints(TF / "orqa")
    weights = {n: h.read(n) for n, h in holders.items() if not n.startswith("block_emb")}
    model_dir = write_checkpoint(tmp_path / "model" / "model.ckpt", weights).parent
    encoded = write_checkpoint(tmp_path / "encoded" / "encoded.ckpt", {"block_emb": holders["block_emb"].read(
        "block_emb")}).parent
    with pytest.raises(ValueError, match="block_emb in a separate checkpoint"):
        RealmForOpenQA.from_tf_checkpoint(model_dir, config=config_of("orqa"))
    model = RealmForOpenQA.from_tf_checkpoint([model_dir, encoded], config=config_of("orqa"))
    check_outputs(model, "orqa")
    with pytest.raises(ValueError, match="is in both"):
        RealmForOpenQA.from_tf_checkpoint([TF / "orqa", encoded], config=config_of("orqa"))


def test_sizes_are_inferred_from_the_weights(tmp_path):
    """Without a config the sizes come from the shapes (heads = hidden / 64, as in every BERT)."""
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal(h.entries[n].shape).astype(np.float32) if n != "global_step" else h.read(n)
               for n, h in open_checkpoints(TF / "orqa").items()}
    resized = {}
    for name, array in weights.items():  # hidden 32 -> 64: every dimension of 32 doubles
        shape = tuple(64 if d == 32 else d for d in array.shape)
        resized[name] = rng.standard_normal(shape).astype(array.dtype) if array.ndim else array
    prefix = write_checkpoint(tmp_path / "model.ckpt", resized)
    model = RealmReader.from_tf_checkpoint(prefix)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers, config.intermediate_size,
            config.vocab_size, config.span_hidden_size) == (64, 1, 2, 37, 106, 8)
    with pytest.raises(ValueError, match="not a multiple of 64"):
        RealmReader.from_tf_checkpoint(TF / "orqa")
