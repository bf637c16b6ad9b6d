"""What a bad TensorFlow checkpoint is refused with: each error names the problem and the fix."""

import json
import shutil

import numpy as np
import pytest

from modeling_realm import RealmConfig, RealmEmbedder, RealmKnowledgeAugEncoder, RealmReader
from modeling_realm.models.tf_bundle import CheckpointFormatError, TFCheckpoint
from modeling_realm.models.tf_checkpoint import open_checkpoints
from tests.helpers import FIXTURES
from tests.tf_bundle_writer import write_checkpoint

TF = FIXTURES / "tf_checkpoints"


def config_of(case: str, **overrides) -> RealmConfig:
    return RealmConfig(**{**json.loads((TF / case / "config.json").read_text()), **overrides})


def variables_of(case: str) -> dict[str, np.ndarray]:
    return {name: holder.read(name) for name, holder in open_checkpoints(TF / case).items()}


def copy_of(case: str, tmp_path):
    target = tmp_path / case
    shutil.copytree(TF / case, target)
    return target


def test_a_missing_variable_is_named(tmp_path):
    weights = variables_of("encoder")
    del weights["bert/encoder/layer_1/output/dense/kernel"]
    prefix = write_checkpoint(tmp_path / "model.ckpt", weights)
    with pytest.raises(ValueError, match=r"lacks 1 weights RealmKnowledgeAugEncoder needs.*layer\.1\.output\.dense"):
        RealmKnowledgeAugEncoder.from_tf_checkpoint(prefix, config=config_of("encoder"))


def test_a_config_that_contradicts_the_shapes_is_refused_before_allocation():
    """The shapes are checked against a model on the meta device: a config asking for 2 x 128 MiB layers fails
    at once, having allocated nothing."""
    config = config_of("encoder", intermediate_size=1 << 20)
    with pytest.raises(ValueError, match=r"intermediate/dense/bias has shape \[37\].*of shape \[1048576\]\. Pass the "
                                         "config these weights were trained with"):
        RealmKnowledgeAugEncoder.from_tf_checkpoint(TF / "encoder", config=config)


def test_a_variable_of_the_wrong_shape_is_named(tmp_path):
    weights = variables_of("embedder")
    weights["module/module/dense/kernel"] = np.zeros((32, 20), dtype=np.float32)
    prefix = write_checkpoint(tmp_path / "model.ckpt", weights)
    with pytest.raises(ValueError, match=r"module/module/dense/kernel has shape \[20, 32\] \(as cls.dense.weight\)"):
        RealmEmbedder.from_tf_checkpoint(prefix, config=config_of("embedder"))


@pytest.mark.parametrize("name, message", [
    ("optimizer/learning_rate", "does not know"),
    ("bert/encoder/layer_0/attention/self/query/scale", "has no weight realm.encoder.layer.0.attention.self.query"),
])
def test_unknown_variables_are_refused(tmp_path, name, message):
    weights = {**variables_of("encoder"), name: np.zeros(3, dtype=np.float32)}
    prefix = write_checkpoint(tmp_path / "model.ckpt", weights)
    with pytest.raises(ValueError, match=message):
        RealmKnowledgeAugEncoder.from_tf_checkpoint(prefix, config=config_of("encoder"))


def test_another_class_s_checkpoint_is_refused():
    with pytest.raises(ValueError, match="does not know"):
        RealmReader.from_tf_checkpoint(TF / "encoder", config=config_of("encoder"))
    with pytest.raises(ValueError, match="holds no RealmReader weights"):
        RealmReader.from_tf_checkpoint(TF / "embedder", config=config_of("embedder"))


def test_two_layouts_of_one_tower_are_refused(tmp_path):
    weights = variables_of("embedder")
    weights["module/module/module/dense/kernel"] = weights["module/module/dense/kernel"]
    prefix = write_checkpoint(tmp_path / "model.ckpt", weights)
    with pytest.raises(ValueError, match="both map to cls.dense.weight"):
        RealmEmbedder.from_tf_checkpoint(prefix, config=config_of("embedder"))


def test_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a TensorFlow checkpoint"):
        RealmEmbedder.from_tf_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"does not name one TensorFlow checkpoint \(no \*.index file\)"):
        RealmEmbedder.from_tf_checkpoint(tmp_path)
    (tmp_path / "model.ckpt.index").write_bytes(b"{}" * 100)
    with pytest.raises(CheckpointFormatError, match="wrong magic number"):
        RealmEmbedder.from_tf_checkpoint(tmp_path)


def test_corrupted_tensor_bytes_fail_their_checksum(tmp_path):
    directory = copy_of("embedder", tmp_path)
    data = directory / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match="fails its CRC-32C checksum"):
        RealmEmbedder.from_tf_checkpoint(directory, config=config_of("embedder"))
    RealmEmbedder.from_tf_checkpoint(directory, config=config_of("embedder"), verify_checksums=False)


def test_a_corrupted_index_fails_its_block_checksum(tmp_path):
    directory = copy_of("embedder", tmp_path)
    index = directory / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0x01
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match="fails its checksum"):
        TFCheckpoint(directory / "model.ckpt")


def test_truncated_and_missing_shards(tmp_path):
    directory = copy_of("embedder", tmp_path)
    data = directory / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError, match="lies past the end of its data shard"):
        RealmEmbedder.from_tf_checkpoint(directory, config=config_of("embedder"))
    data.unlink()
    with pytest.raises(FileNotFoundError, match="index and all its data shards must be copied together"):
        RealmEmbedder.from_tf_checkpoint(directory, config=config_of("embedder"))


def test_tensorflow_reads_what_this_reader_reads(tmp_path):
    """Cross-check against TensorFlow itself, for the dtypes the fixtures lack (runs where tensorflow is installed;
    the fixtures themselves were written by TensorFlow, so the package's tests need no TensorFlow)."""
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed (pip install tensorflow-cpu to run "
                                                  "this cross-check; the committed fixtures cover float32/int64)")
    rng = np.random.default_rng(0)
    arrays = {"a/half": rng.standard_normal((3, 5)).astype(np.float16), "b/double": rng.standard_normal(4),
              "c/int": np.arange(6, dtype=np.int32).reshape(2, 3), "d/bf16": rng.standard_normal((2, 2))}
    tensors = [tf.constant(arrays[n], dtype=tf.bfloat16 if n == "d/bf16" else None) for n in sorted(arrays)]
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "x.ckpt"), tensor_names=sorted(arrays),
                      shape_and_slices=[""] * len(arrays), tensors=tensors)
    checkpoint = TFCheckpoint(tmp_path / "x.ckpt")
    for name in arrays:
        expected = tf.train.load_variable(str(tmp_path / "x.ckpt"), name)
        np.testing.assert_array_equal(checkpoint.read(name), np.asarray(expected, dtype=checkpoint.read(name).dtype))
