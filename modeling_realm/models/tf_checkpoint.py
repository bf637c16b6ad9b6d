"""Load google's original TensorFlow REALM and ORQA checkpoints into the model classes, without TensorFlow.

`load_tf_checkpoint(RealmReader, "orqa_nq_model")` (also `RealmReader.from_tf_checkpoint(...)` and
`from_pretrained(path, from_tf=True)`) reads the checkpoint's index (`tf_bundle`), maps google's variable names to
the class's state-dict names (`tf_names`), and refuses, before any tensor is allocated: variables it does not know,
weights the class needs that the checkpoint lacks, two variables for one weight, and shapes that contradict the
config (given, or inferred from the shapes). Tensor bytes are checked against their CRC-32C as they are read.
"""

import logging
import re
from pathlib import Path

import torch

from modeling_realm.models.configuration import RealmConfig
from modeling_realm.models.tf_bundle import TFCheckpoint
from modeling_realm.models.tf_names import LAYOUTS, map_names

logger = logging.getLogger(__name__)

CHECKPOINT_STATE = re.compile(r'^model_checkpoint_path:\s*"(?P<path>[^"]*)"\s*$', re.MULTILINE)
# Weights no google checkpoint holds: MLM decoders (tied to the word embeddings, or unused).
NEVER_IN_TF = re.compile(r"(^|\.)cls\.predictions\.decoder\.(weight|bias)$")
# Unused by every forward pass (kept for 4.x's state dicts): left as initialised when a checkpoint lacks them.
UNUSED_HEADS = {"RealmEmbedder": r"^cls\.predictions\.", "RealmScorer": r"^embedder\.cls\.predictions\.",
                "RealmRetriever": r"^embedder\.cls\.predictions\.", "RealmReader": r"^cls\.predictions\.",
                "RealmForOpenQA": r"^(embedder|reader)\.cls\.predictions\."}


def resolve_checkpoint(path) -> Path:
    """The checkpoint prefix that `path` names: a prefix (`dir/model.ckpt-100`), its `.index` file, or a directory
    (its `checkpoint` state file, its single `*.index`, or a TF-Hub module's `variables/variables`)."""
    path = Path(path)
    if path.name.endswith(".index") and path.is_file():
        return path.with_name(path.name[: -len(".index")])
    if path.with_name(path.name + ".index").is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a TensorFlow checkpoint: no {path.name}.index next to it and not a "
                                "directory. Pass a checkpoint directory, a prefix such as dir/model.ckpt-1000, or "
                                "its .index file.")
    state = path / "checkpoint"
    if state.is_file():
        match = CHECKPOINT_STATE.search(state.read_text(errors="replace"))
        if match:
            # The state file often holds the training machine's absolute path (gs://...): look next to it instead.
            prefix = path / Path(match["path"]).name
            if prefix.with_name(prefix.name + ".index").is_file():
                return prefix
    indices = sorted(path.glob("*.index")) or sorted(path.glob("variables/*.index"))
    if len(indices) == 1:
        return indices[0].with_name(indices[0].name[: -len(".index")])
    found = ", ".join(p.name for p in indices) or "no *.index file"
    raise FileNotFoundError(f"{path} does not name one TensorFlow checkpoint ({found}). Pass the prefix of the one "
                            f"to load, e.g. {path}/model.ckpt-1000.")


def open_checkpoints(checkpoints) -> dict[str, TFCheckpoint]:
    """Variable name -> the checkpoint holding it, over one or several checkpoints (google's open-QA models keep
    `block_emb` in a separate `encoded.ckpt`); a name in two of them is refused."""
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    holders = {}
    for path in paths:
        checkpoint = TFCheckpoint(resolve_checkpoint(path))
        for name in checkpoint.entries:
            if name in holders:
                raise ValueError(f"Variable {name} is in both {holders[name].prefix} and {checkpoint.prefix}; pass "
                                 "checkpoints that hold different parts of the model.")
            holders[name] = checkpoint
    return holders


def torch_shapes(holders, mapped) -> dict[str, tuple[int, ...]]:
    """State-dict key -> the shape its tensor will have (kernels transposed), two variables for one key refused."""
    shapes, sources = {}, {}
    for name, (key, transpose) in mapped.items():
        if key in sources:
            raise ValueError(f"{sources[key]} and {name} both map to {key}: the checkpoint mixes two layouts of one "
                             "tower. Load one of them (pass the checkpoint of one model).")
        shape = holders[name].entries[name].shape
        shapes[key], sources[key] = (tuple(reversed(shape)) if transpose else shape), name
    return shapes


def infer_config(shapes: dict[str, tuple[int, ...]]) -> RealmConfig:
    """A RealmConfig with the sizes the weights record (the rest at REALM's defaults)."""
    sizes = {}
    for key, shape in shapes.items():
        if key.endswith("embeddings.word_embeddings.weight"):
            sizes["vocab_size"], sizes["hidden_size"] = shape
        elif key.endswith("embeddings.position_embeddings.weight"):
            sizes["max_position_embeddings"] = shape[0]
        elif key.endswith("embeddings.token_type_embeddings.weight"):
            sizes["type_vocab_size"] = shape[0]
        elif key.endswith("layer.0.intermediate.dense.weight"):
            sizes["intermediate_size"] = shape[0]
        elif key.endswith("cls.dense.weight"):
            sizes["retriever_proj_size"] = shape[0]
        elif key.endswith("qa_outputs.dense_intermediate.weight"):
            sizes["span_hidden_size"] = shape[0] // 2
        elif key == "block_emb":
            sizes["num_block_records"] = shape[0]
    layers = {int(m[1]) for key in shapes if (m := re.search(r"encoder\.layer\.(\d+)\.", key))}
    if layers:
        sizes["num_hidden_layers"] = max(layers) + 1
    hidden = sizes.get("hidden_size", 768)
    if hidden % 64:
        raise ValueError(f"The checkpoint's hidden size {hidden} is not a multiple of 64, so its number of attention "
                         "heads cannot be inferred; pass config=RealmConfig(..., num_attention_heads=...).")
    return RealmConfig(**sizes, num_attention_heads=hidden // 64)


def expected_shapes(model_class, config) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of `model_class(config)` and its shape, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        skeleton = model_class(config)
    return {key: tuple(tensor.shape) for key, tensor in skeleton.state_dict().items()}


def check_against_model(name: str, shapes, expected, checkpoint_names) -> None:
    unknown = sorted(set(shapes) - set(expected))
    if unknown:
        raise ValueError(f"{name} has no weight {unknown[0]} (from TF variable {checkpoint_names[unknown[0]]}); "
                         "the checkpoint holds a different model. Load it with the class it was trained as.")
    for key, shape in shapes.items():
        if expected[key] != shape:
            raise ValueError(f"TF variable {checkpoint_names[key]} has shape {list(shape)} (as {key}), but the config "
                             f"gives {name} a {key} of shape {list(expected[key])}. Pass the config these weights "
                             "were trained with, or config=None to read the sizes from the checkpoint.")
    optional = re.compile(UNUSED_HEADS.get(name, "$^"))
    missing = sorted(k for k in set(expected) - set(shapes) if not NEVER_IN_TF.search(k) and not optional.search(k))
    if missing:
        hint = (" google's open-QA models keep block_emb in a separate checkpoint (encoded/encoded.ckpt): pass "
                "both, e.g. [model_dir, encoded_dir]." if "block_emb" in missing else "")
        raise ValueError(f"The checkpoint lacks {len(missing)} weights {name} needs, e.g. {missing[:3]}: it holds "
                         f"another model (or a part of it).{hint}")


def load_tf_checkpoint(model_class, checkpoints, config: RealmConfig | None = None, verify: bool = True):
    """`model_class` (a REALM class) with the weights of google's TensorFlow checkpoint(s), in eval mode.

    Args:
        checkpoints: a checkpoint directory, prefix or `.index` file, or a list of them (merged).
        config: the model's sizes; default: inferred from the weights (REALM's defaults for the rest).
        verify: check every tensor's CRC-32C (about 1 s per 100 MB).
    """
    name = model_class.__name__
    if name not in LAYOUTS:
        raise ValueError(f"{name} has no TensorFlow layout; use one of {sorted(LAYOUTS)}.")
    holders = open_checkpoints(checkpoints)
    mapped, skipped, unknown = map_names(name, holders)
    if unknown:
        raise ValueError(f"The checkpoint holds {len(unknown)} variables a {name} does not know, e.g. "
                         f"{unknown[:3]}: it is not a google REALM/ORQA checkpoint of this class. Check the class "
                         f"(the layouts are listed in modeling_realm/models/tf_names.py).")
    if not mapped:
        raise ValueError(f"The checkpoint holds no {name} weights (only {skipped[:3]}...); load it with the class "
                         "whose part it holds (e.g. RealmReader for a reader, RealmEmbedder for a retriever).")
    shapes = torch_shapes(holders, mapped)
    config = config if config is not None else infer_config(shapes)
    checkpoint_names = {key: tf_name for tf_name, (key, _) in mapped.items()}
    check_against_model(name, shapes, expected_shapes(model_class, config), checkpoint_names)
    logger.info("Loading %d TF variables into %s; skipped %d (training state or another model's part).",
                len(mapped), name, len(skipped))
    model = model_class(config)
    copy_weights(model, holders, mapped, verify)
    return model.eval()


@torch.no_grad()
def copy_weights(model, holders, mapped, verify: bool) -> None:
    """Read the variables one at a time into the model's tensors (peak memory: the model plus one variable)."""
    targets = model.state_dict()  # tensors sharing the parameters' storage (tied ones included)
    for tf_name, (key, transpose) in mapped.items():
        source = torch.from_numpy(holders[tf_name].read(tf_name, verify=verify))
        # a TF kernel [in, out] -> a torch Linear weight [out, in]
        targets[key].copy_(source.T if transpose else source)
    fill_unused_decoders(targets, mapped)


def fill_unused_decoders(targets: dict, mapped) -> None:
    """Give an MLM decoder that is not tied (the embedder's and reader's unused heads) the word embeddings of its
    tower, as BERT's TensorFlow head computes its logits, instead of leaving random values."""
    loaded = {key for key, _ in mapped.values()}
    suffix = "cls.predictions.decoder.weight"
    for key, tensor in targets.items():
        source = key[: -len(suffix)] + "realm.embeddings.word_embeddings.weight"
        if key.endswith(suffix) and source in loaded and tensor.data_ptr() != targets[source].data_ptr():
            tensor.copy_(targets[source])  # [vocab, hidden]
