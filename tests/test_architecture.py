"""The floor plan of ARCHITECTURE.md, checked on the sources: imports flow one way between the three packages and
between the layers inside them, no package imports another's private names, module imports have no cycle, the
examples use only the public API, and every public name a package exports exists."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tokenization", "index_builder", "modeling_realm")  # bottom to top
# Layers inside a package (a module may import its own layer and those below); the first path prefix that matches.
LAYERS = {
    "index_builder": [("index_builder.index", 0), ("index_builder.encoding", 1), ("index_builder.hub", 1),
                      ("index_builder.google_checkpoint", 1), ("index_builder", 2)],
    "modeling_realm": [("modeling_realm.hub", 0), ("modeling_realm.retrieval", 0),
                       ("modeling_realm.training", 0), ("modeling_realm.models", 1),
                       ("modeling_realm.openqa", 2), ("modeling_realm.pretraining", 2), ("modeling_realm.auto", 3),
                       ("modeling_realm.apps", 4), ("modeling_realm", 5)],
}
# Imports made inside a function that go against the layers on purpose (ARCHITECTURE.md, "The dependency rule").
UPWARD_ON_PURPOSE = {
    ("index_builder.index.block_index", "index_builder.hub.repo"),
    ("index_builder.index.block_index", "index_builder.google_checkpoint"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files():
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def imports_of(path: Path):
    """(imported module, imported names, at module level?) of every import statement of `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, top_level: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, [], top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}: relative import; the package modules import absolutely"
                found.append((child.module, [alias.name for alias in child.names], top_level))
            else:
                visit(child, top_level)

    visit(tree, True)
    return found


def project_imports():
    """(importer module, imported project module, names, top level?) over every package file."""
    rows = []
    for path in package_files():
        for module, names, top_level in imports_of(path):
            if module.split(".")[0] in PACKAGES:
                rows.append((module_name(path), module, names, top_level))
    return rows


def layer(module: str) -> int:
    for prefix, rank in LAYERS.get(module.split(".")[0], []):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return 0


def test_packages_import_only_the_packages_below_them():
    upward = [f"{importer} imports {module}" for importer, module, _, _ in project_imports()
              if PACKAGES.index(module.split(".")[0]) > PACKAGES.index(importer.split(".")[0])]
    assert upward == []


def test_layers_inside_a_package_are_one_way():
    upward = [f"{importer} imports {module}" for importer, module, _, _ in project_imports()
              if importer.split(".")[0] == module.split(".")[0] and layer(module) > layer(importer)
              and (importer, module) not in UPWARD_ON_PURPOSE]
    assert upward == []


def test_no_private_name_of_another_package_is_imported():
    private = [f"{importer} imports {module}: {name}" for importer, module, names, _ in project_imports()
               for name in names or [module.rsplit(".", 1)[-1]]
               if importer.split(".")[0] != module.split(".")[0] and name.startswith("_")]
    assert private == []


def test_module_imports_have_no_cycle():
    modules = {module_name(path) for path in package_files()}
    graph = {module: set() for module in modules}
    for importer, module, names, top_level in project_imports():
        if top_level:
            targets = [f"{module}.{name}" for name in names if f"{module}.{name}" in modules] or [module]
            graph[importer].update(target for target in targets if target in modules and target != importer)
    # A package's __init__ re-exports its modules; an edge into a package is an edge into its __init__ only.
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_use_only_the_public_api(path):
    text = path.read_text(encoding="utf-8")
    assert "sys.path" not in text, f"{path.name} edits sys.path; import the package instead"
    for module, names, _ in imports_of(path):
        if module.split(".")[0] not in PACKAGES:
            continue
        package = importlib.import_module(module)
        exported = getattr(package, "__all__", None)
        assert exported is not None, f"{path.name} imports {module}, which is not a package with a public API"
        hidden = [name for name in names if name not in exported and not _is_public_subpackage(package, name)]
        assert hidden == [], f"{path.name} imports {hidden} from {module}, outside its __all__"


def _is_public_subpackage(package, name: str) -> bool:
    """`from modeling_realm import training`: a subpackage with a public API of its own."""
    if importlib.util.find_spec(f"{package.__name__}.{name}") is None:
        return False
    module = importlib.import_module(f"{package.__name__}.{name}")
    return hasattr(module, "__path__") and hasattr(module, "__all__")


@pytest.mark.parametrize("package", sorted(module_name(init) for name in PACKAGES
                                           for init in (ROOT / name).rglob("__init__.py")))
def test_every_exported_name_exists(package):
    module = importlib.import_module(package)
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert missing == []
