"""Model and tokenizer code saved next to the weights, so a checkpoint loads without realm-hf installed.

`AutoModel.from_pretrained(repo, trust_remote_code=True)` imports the classes named in config.json's `auto_map` from
`.py` files of the repository, and resolves their relative imports (`from .heads import ...`) to further files of the
repository. transformers' `custom_object_save` copies a class's module and its relative imports that way, but it
would not do for REALM: it writes one `auto_map` entry per object (a REALM repository needs `AutoConfig`, `AutoModel`
and, for the encoder, `AutoModelForMaskedLM`), and it leaves absolute imports of this project alone, while some model
modules import the `tokenization` package (`qa.py`: `from tokenization.reader_inputs import ...`), which a machine
without realm-hf does not have.

So the bundle is built here: the module of the class, then every module it imports relatively or from the
`modeling_realm` / `tokenization` packages (by module, e.g. `tokenization.reader_inputs`), recursively, copied flat
into the checkpoint folder, with those absolute imports rewritten as relative ones (`from .reader_inputs import ...`;
the package's own modules import each other absolutely, `from modeling_realm.models.heads import ...`, for this).
Files without such imports are copied unchanged. The result is checked with transformers' own `get_imports` (the
list its loader checks): if a file still imports a project package outside a `try:` block (`index_builder`, or a
package-level `from tokenization import ...`), nothing is written and a warning names the file and the import.

Files are located through the class's own module, so a model that was itself loaded as remote code saves its code
the same way.
"""

import ast
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from transformers.dynamic_module_utils import get_imports

from tokenization.storage import atomic_file, atomic_write_text

logger = logging.getLogger(__name__)

# Top-level packages of this project: remote code must not import them (a machine without realm-hf has none).
LOCAL_PACKAGES = frozenset({"modeling_realm", "tokenization", "index_builder", "examples"})
# Project packages whose modules are copied into the bundle when a bundled module imports them.
COPIED_PACKAGES = frozenset({"modeling_realm", "tokenization"})
# Where this package's model modules live: modeling_realm/ when installed, the checkpoint folder (a flat bundle, this
# file included) when the model was itself loaded as remote code.
PACKAGE_ROOT = Path(__file__).resolve().parents[1] if __name__.startswith("modeling_realm.") else \
    Path(__file__).resolve().parent
# Auto classes beyond AutoConfig/AutoModel that map to a model class.
EXTRA_AUTO_CLASSES = {"RealmKnowledgeAugEncoder": ("AutoModelForMaskedLM",)}


class BundleError(ValueError):
    """The code of a class cannot be shipped as remote code; the message says which file and import."""


def module_file(cls) -> Path:
    """The source file that defines `cls`."""
    return Path(sys.modules[cls.__module__].__file__).resolve()


def code_bundle(cls) -> dict[str, str]:
    """File name -> source text of the module defining `cls` (first) and of every module it needs, recursively."""
    bundle, origins, queue = {}, {}, [module_file(cls)]
    while queue:
        path = queue.pop(0)
        if path.name in origins:
            if origins[path.name] != path:
                raise BundleError(f"two modules named {path.name} ({origins[path.name]} and {path}) would share one "
                                  "file of the flat bundle; rename one of them.")
            continue
        origins[path.name] = path
        bundle[path.name], needed = _localise_imports(path)
        queue.extend(needed)
    return bundle


def _localise_imports(path: Path) -> tuple[str, list[Path]]:
    """The text of `path` with imports of copied project modules made relative, and the files it imports."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    needed = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _imported_file(path, node)
        if target is None:
            continue
        needed.append(target)
        if node.level == 0:  # `from tokenization.reader_inputs import x` -> `from .reader_inputs import x`
            line = lines[node.lineno - 1]
            start = line.find(node.module)
            if start < 0:
                raise BundleError(f"{path.name}, line {node.lineno}: write `from {node.module} import ...` on one "
                                  "line so that it can be made relative.")
            lines[node.lineno - 1] = line[:start] + "." + target.stem + line[start + len(node.module):]
    return "".join(lines), needed


def _imported_file(path: Path, node: ast.ImportFrom) -> Path | None:
    """The file a `from ... import` statement of `path` needs in the bundle (None: not a project module)."""
    where = f"{path.name}, line {node.lineno}"
    if node.level == 1 and node.module and "." not in node.module:
        target = path.parent / f"{node.module}.py"
        if not target.is_file():
            raise BundleError(f"{where} imports .{node.module}, which is not a module file next to it.")
        return target
    if node.level > 0:
        raise BundleError(f"{where}: only `from .module import name` relative imports can be shipped as remote code.")
    if node.module.split(".")[0] not in COPIED_PACKAGES:
        return None
    spec = importlib.util.find_spec(node.module)
    if spec is None or spec.origin is None or spec.submodule_search_locations is not None:
        return None  # a package-level import: left as is, and refused by the import check unless inside `try:`
    return Path(spec.origin).resolve()


def local_imports(files) -> dict[str, list[str]]:
    """File name -> the project packages it imports (outside `try:` blocks); empty when the files can be shared."""
    found = {}
    for path in files:
        names = sorted(set(get_imports(path)) & LOCAL_PACKAGES)
        if names:
            found[Path(path).name] = names
    return found


def write_bundle(bundle: dict[str, str], directory) -> list[str]:
    """Check `bundle` with transformers' import scan, then write its files into `directory`; returns their names."""
    with tempfile.TemporaryDirectory(prefix="realm-code-") as staging:
        staged = [Path(staging) / name for name in bundle]
        for path in staged:
            path.write_text(bundle[path.name], encoding="utf-8")
        offending = local_imports(staged)
        if offending:
            details = "; ".join(f"{name} imports {', '.join(names)}" for name, names in offending.items())
            raise BundleError(f"{details}. Import those packages by module (`from tokenization.<module> import "
                              "...`), inside a `try:` block, or not at all in modeling_realm's model modules.")
        for path in staged:
            _copy_atomic(path, Path(directory) / path.name)
    return list(bundle)


def class_ref(cls) -> str:
    """`module.Class`, as `auto_map` names a class of a repository file."""
    return f"{module_file(cls).stem}.{cls.__name__}"


def model_auto_map(model_class, config_class) -> dict[str, str]:
    """The config.json `auto_map` of a repository holding `model_class`."""
    auto_map = {"AutoConfig": class_ref(config_class), "AutoModel": class_ref(model_class)}
    for auto_class in EXTRA_AUTO_CLASSES.get(model_class.__name__, ()):
        auto_map[auto_class] = class_ref(model_class)
    return auto_map


def save_model_code(model, directory) -> list[str]:
    """Write the source of `model`'s class into `directory` and add its `auto_map` to `directory/config.json`.

    Returns the names of the files written; [] (after a warning) when the class is not one of this package's (a
    subclass defined elsewhere) or its code cannot be shipped (see `BundleError`).
    """
    model_class, config_class = type(model), type(model.config)
    if not module_file(model_class).is_relative_to(PACKAGE_ROOT):
        logger.warning("%s is defined outside modeling_realm (%s); its code is not saved, so the checkpoint loads only "
                       "where that code is importable.", model_class.__name__, module_file(model_class))
        return []
    try:
        bundle = code_bundle(model_class)
        if module_file(config_class).name not in bundle:
            raise BundleError(f"the config class {config_class.__name__} is not among the modules it imports.")
        names = write_bundle(bundle, directory)
    except BundleError as error:
        logger.warning("The code of %s is not saved, so the checkpoint loads only with realm-hf: %s",
                       model_class.__name__, error)
        return []
    _update_json(Path(directory) / "config.json", {"auto_map": model_auto_map(model_class, config_class)})
    return names


def save_tokenizer_code(tokenizer, directory) -> list[str]:
    """Write the source of a custom tokenizer class (such as `RealmTokenizerFast`) into `directory` and point
    `AutoTokenizer` at it in `tokenizer_config.json`. A transformers tokenizer needs no code: returns []."""
    tokenizer_class = type(tokenizer)
    if tokenizer_class.__module__.split(".")[0] == "transformers":
        return []
    config_path = Path(directory) / "tokenizer_config.json"
    if not config_path.is_file():
        logger.warning("%s wrote no tokenizer_config.json; its code is not saved.", tokenizer_class.__name__)
        return []
    try:
        names = write_bundle(code_bundle(tokenizer_class), directory)
    except BundleError as error:
        logger.warning("The code of %s is not saved: %s", tokenizer_class.__name__, error)
        return []
    # transformers 5 loads the fast class (second entry) whenever one is given.
    pair = [None, class_ref(tokenizer_class)] if tokenizer_class.__name__.endswith("Fast") else \
        [class_ref(tokenizer_class), None]
    auto_map = json.loads(config_path.read_text(encoding="utf-8")).get("auto_map") or {}
    if not isinstance(auto_map, dict):  # legacy list form: [slow, fast]
        auto_map = {}
    _update_json(config_path, {"auto_map": {**auto_map, "AutoTokenizer": pair}})
    return names


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_file(target) as staging:
        shutil.copyfile(source, staging)


def _update_json(path: Path, fields: dict) -> None:
    """Set top-level `fields` of the JSON object in `path` (written to a temporary file, then moved into place)."""
    content = json.loads(path.read_text(encoding="utf-8"))
    content.update(fields)
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
