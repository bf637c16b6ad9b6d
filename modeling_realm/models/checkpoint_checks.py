"""Checks of a local checkpoint directory before transformers loads it, so that common mistakes fail with a message
that names the file and the fix instead of a size-mismatch report or a deserialisation error.

Only local directories are checked (Hub ids are resolved and verified by huggingface_hub); nothing here reads
tensor data: a safetensors header is parsed, a legacy `pytorch_model.bin` is opened with `weights_only=True` onto the
meta device (shapes only), config.json is read as JSON. Every size config.json gives that the weights also record -
vocabulary, hidden and intermediate sizes, positions, token types and the number of layers of each BERT tower - must
agree with them before transformers builds a single layer.
"""

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

# Classes none of whose weights another REALM class's checkpoint holds: loading one from another class's checkpoint
# would leave every weight freshly initialised.
OWN_WEIGHTS_ONLY = {"RealmForOpenQA"}


def check_local_checkpoint(path, class_name: str, config_given: bool = False) -> None:
    """Raise when the directory `path` lacks config.json, holds an unreadable safetensors file, or was saved by a
    class whose weights `class_name` cannot use; do nothing for Hub ids and other non-directories."""
    directory = Path(path) if isinstance(path, (str, Path)) else None
    if directory is None or not directory.is_dir():
        return
    config_file = directory / "config.json"
    if not config_file.exists():
        if config_given:
            return
        raise FileNotFoundError(f"{directory} has no config.json, so the model's sizes are unknown. Restore the "
                                "config.json saved with these weights, or pass config=RealmConfig(...) to "
                                "from_pretrained.")
    config = json.loads(config_file.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} holds a JSON {type(config).__name__}, not an object; restore the config.json "
                         "saved with these weights.")
    weights = {path: _read_safetensors_header(path) for path in sorted(directory.glob("*.safetensors"))}
    legacy = directory / "pytorch_model.bin"
    if not weights and legacy.is_file():
        weights = {legacy: _read_legacy_shapes(legacy)}
    for path, shapes in weights.items():
        _check_sizes(path, shapes, config)
    _check_layer_count(directory, weights, config)
    _check_architecture(directory, config, class_name)


def _read_safetensors_header(weights: Path) -> dict[str, list[int]]:
    """The shape of every tensor in `weights`, from its header alone (the file is opened once)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {name: handle.get_slice(name).get_shape() for name in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{weights} cannot be read ({error}): the file is truncated or corrupted (an interrupted "
                         "download or save); re-download it or save the model again.") from error


def _read_legacy_shapes(weights: Path) -> dict[str, list[int]]:
    """The shape of every tensor of a legacy `pytorch_model.bin`, loaded with `weights_only=True` onto the meta
    device: no tensor data is read or allocated."""
    try:
        state = torch.load(str(weights), map_location="meta", weights_only=True, mmap=True)
    except (RuntimeError, OSError, ValueError, EOFError) as error:
        raise ValueError(f"{weights} cannot be read ({str(error)[:200]}): the file is truncated, corrupted or not a "
                         "PyTorch checkpoint; re-download it or save the model again.") from error
    if not isinstance(state, dict):
        raise ValueError(f"{weights} holds a {type(state).__name__}, not a state dict; point to a model checkpoint.")
    return {name: list(tensor.shape) for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}


# Tensor name suffix -> the config fields its shape must equal, dimension by dimension.
SIZED_TENSORS = {
    "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
    "embeddings.position_embeddings.weight": ("max_position_embeddings", "hidden_size"),
    "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
    "intermediate.dense.weight": ("intermediate_size", "hidden_size"),
}


LAYER = re.compile(r"^(?P<tower>.*?)encoder\.layer\.(?P<number>\d+)\.")


def _check_sizes(weights: Path, shapes: dict[str, list[int]], config: dict) -> None:
    """config.json's sizes against the shapes in a weights header (a hand-edited or mismatched config.json
    otherwise fails deep inside transformers with a size-mismatch report)."""
    for name, shape in shapes.items():
        fields = next((f for suffix, f in SIZED_TENSORS.items() if name.endswith(suffix)), ())
        for field, size in zip(fields, shape):
            if field in config and config[field] != size:
                raise ValueError(f"{weights.parent / 'config.json'} says {field}={config[field]}, but the weights "
                                 f"in {weights.name} were saved with {field}={size} ({name} has shape "
                                 f"{list(shape)}). Restore the config.json saved with these weights (or set "
                                 f"{field} to {size}).")


def _check_layer_count(directory: Path, weights: dict[Path, dict], config: dict) -> None:
    """Every BERT tower in the weights (`realm.`, `embedder.realm.`, `reader.realm.`...), counted over all weight
    files (a sharded checkpoint splits a tower's layers), has num_hidden_layers layers - before transformers builds
    a million of them."""
    layers = defaultdict(set)
    for shapes in weights.values():
        for name in shapes:
            match = LAYER.match(name)
            if match:
                layers[match["tower"]].add(int(match["number"]))
    expected = config.get("num_hidden_layers")
    for tower, numbers in sorted(layers.items()):
        if expected is not None and len(numbers) != expected:
            files = ", ".join(path.name for path in weights)
            raise ValueError(f"{directory / 'config.json'} says num_hidden_layers={expected!r}, but the weights in "
                             f"{files} hold {len(numbers)} layers ({tower}encoder). Restore the config.json saved "
                             f"with these weights (or set num_hidden_layers to {len(numbers)}).")


def _check_architecture(directory: Path, config: dict, class_name: str) -> None:
    saved = config.get("architectures") or []
    if class_name in OWN_WEIGHTS_ONLY and saved and class_name not in saved:
        raise ValueError(f"{directory} holds a {saved[0]} checkpoint, not a {class_name} one: loading it as "
                         f"{class_name} would initialise every weight at random. Load it with "
                         f"{saved[0]}.from_pretrained, or point to a {class_name} checkpoint.")
