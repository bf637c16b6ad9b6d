"""Loader audit (SECURITY.md): a static scan of the library and example sources for unsafe deserialisation.

The scan fails on `torch.load` without `weights_only=True`, `np.load` without an `allow_pickle` argument or with a
literal `allow_pickle=True` outside ALLOWED_PICKLE, pickle-family imports and calls, `trust_remote_code=True` passed
to a call, and calls of the `eval`/`exec` builtins. It also checks that every function that reads files with a raw
loader has a row in SECURITY.md, and that every row of SECURITY.md names a file and function that exist.

The refusal of google's pickled `block_records.npy` without `allow_pickle=True` is a behaviour test in
tests/index_builder/test_google_checkpoint.py (`test_pickled_records_are_refused_without_allow_pickle`,
`test_refused_records_are_never_unpickled`); it is not repeated here.
"""

import ast
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("modeling_realm", "index_builder", "tokenization", "examples")
SECURITY = ROOT / "SECURITY.md"

# (file, enclosing function) -> why a literal allow_pickle=True is acceptable there.
ALLOWED_PICKLE = {
    ("index_builder/google_checkpoint.py", "_load_records"):
        "google's block_records.npy is a pickled object array; the caller "
        "(index_from_realm_checkpoint) reaches it only after _records_dtype refused object arrays unless the user "
        "passed allow_pickle=True, which defaults to False",
}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
PICKLE_CALLS = {"joblib.load", "pd.read_pickle", "pandas.read_pickle", "read_pickle"}
EXEC_BUILTINS = {"eval", "exec"}
# Calls that read files (or download them): each function that makes one must have a row in SECURITY.md.
RAW_LOADER_NAMES = {"safe_open", "read_index", "hf_hub_download", "snapshot_download", "load_dataset", "from_file",
                    "ParquetFile", "read_schema", "load_state"}
RAW_LOADER_DOTTED = {"torch.load", "np.load", "numpy.load", "datasets.load_from_disk"}


# ------------------------------------------------------------------------------------------------ the scanner
def dotted(node) -> str | None:
    """`a.b.c` for a Name/Attribute chain (a call in the chain is written `f()`), None otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Call):
        base = dotted(node.func)
        return None if base is None else f"{base}()"
    return None


def _keyword(call: ast.Call, name: str):
    """(present, value node) of keyword `name` in `call`."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return True, keyword.value
    return False, None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def calls_with_scope(tree: ast.AST):
    """(call, name of the innermost enclosing function or '<module>', names of all enclosing functions)."""
    found = []

    def visit(node, scopes):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes = scopes + [node.name]
        if isinstance(node, ast.Call):
            found.append((node, scopes[-1] if scopes else "<module>", tuple(scopes)))
        for child in ast.iter_child_nodes(node):
            visit(child, scopes)

    visit(tree, [])
    return found


def _import_findings(tree: ast.AST) -> list[tuple[int, str]]:
    findings = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in PICKLE_MODULES:
                findings.append((node.lineno, f"imports {name} (pickle-family deserialisation)"))
    return findings


def _call_finding(call: ast.Call, scope: str, path: str) -> str | None:
    name = dotted(call.func) or ""
    last = name.rsplit(".", 1)[-1]
    if name == "torch.load":
        present, value = _keyword(call, "weights_only")
        if not (present and _is_true(value)):
            return "torch.load without weights_only=True"
    if name in ("np.load", "numpy.load"):
        present, value = _keyword(call, "allow_pickle")
        if not present:
            return f"{name} without an explicit allow_pickle argument"
        if _is_true(value) and (path, scope) not in ALLOWED_PICKLE:
            return f"{name}(allow_pickle=True) outside the allowlist"
    if name in PICKLE_CALLS or last == "read_pickle":
        return f"{name} (pickle deserialisation)"
    if isinstance(call.func, ast.Name) and call.func.id in EXEC_BUILTINS:
        return f"{call.func.id}() executes code built at run time"
    present, value = _keyword(call, "trust_remote_code")
    if present and _is_true(value):
        return f"{name or 'a call'} passes trust_remote_code=True"
    return None


def scan_source(text: str, path: str = "<snippet>") -> list[str]:
    """Findings `path:line: problem` for one source text (path relative to the repository root)."""
    tree = ast.parse(text, filename=path)
    findings = [(line, problem) for line, problem in _import_findings(tree)]
    for call, scope, _ in calls_with_scope(tree):
        problem = _call_finding(call, scope, path)
        if problem is not None:
            findings.append((call.lineno, problem))
    return [f"{path}:{line}: {problem}" for line, problem in sorted(findings)]


def loader_sites(text: str, path: str) -> list[tuple[str, tuple[str, ...], int, str]]:
    """(path, enclosing functions, line, loader) of every raw file-loading call in a source text."""
    sites = []
    for call, _, scopes in calls_with_scope(ast.parse(text, filename=path)):
        name = dotted(call.func) or ""
        if name.rsplit(".", 1)[-1] in RAW_LOADER_NAMES or name in RAW_LOADER_DOTTED:
            sites.append((path, scopes, call.lineno, name))
    return sites


def source_files() -> list[Path]:
    return sorted(path for package in SCANNED for path in (ROOT / package).rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------------------------------------ the scan
def test_the_scan_covers_every_package():
    files = {relative(path).split("/")[0] for path in source_files()}
    assert files == set(SCANNED)


def test_library_and_examples_have_no_unsafe_loader():
    findings = [finding for path in source_files()
                for finding in scan_source(path.read_text(encoding="utf-8"), relative(path))]
    assert findings == [], "\n".join(findings)


def test_every_allowlisted_pickle_site_exists():
    """A stale allowlist entry would silently allow a future site: each one must still hold a literal opt-in."""
    for path, function in ALLOWED_PICKLE:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        hits = [call for call, scope, _ in calls_with_scope(tree) if scope == function
                and dotted(call.func) in ("np.load", "numpy.load") and _is_true(_keyword(call, "allow_pickle")[1])]
        assert hits, f"{path}:{function} no longer calls np.load(allow_pickle=True); drop it from ALLOWED_PICKLE"


def test_the_pickle_opt_in_defaults_to_false():
    from index_builder import BlockIndex
    from index_builder.google_checkpoint import index_from_realm_checkpoint
    from modeling_realm.apps.ask import parse_args

    for function in (index_from_realm_checkpoint, BlockIndex.from_realm_checkpoint):
        assert inspect.signature(function).parameters["allow_pickle"].default is False, function
    assert parse_args(["who?", "--model", "some/model"]).allow_pickle is False
    assert parse_args(["who?", "--model", "some/model", "--allow-pickle"]).allow_pickle is True


BAD_SNIPPETS = {
    "torch.load(path)": "weights_only",
    "torch.load(path, weights_only=False)": "weights_only",
    "torch.load(path, weights_only=flag)": "weights_only",
    "np.load(path)": "allow_pickle argument",
    "numpy.load(path, allow_pickle=True)": "allowlist",
    "def reader(path):\n    return np.load(path, allow_pickle=True)": "allowlist",
    "import pickle": "imports pickle",
    "import _pickle as cPickle": "imports _pickle",
    "from dill import loads": "imports dill",
    "import cloudpickle.cloudpickle": "imports cloudpickle",
    "joblib.load(path)": "joblib.load",
    "pd.read_pickle(path)": "read_pickle",
    "AutoModel.from_pretrained(repo, trust_remote_code=True)": "trust_remote_code",
    "eval(text)": "eval()",
    "exec(code, {})": "exec()",
}


@pytest.mark.parametrize("snippet", list(BAD_SNIPPETS))
def test_the_scanner_flags_bad_code(snippet):
    findings = scan_source(snippet)
    assert len(findings) == 1 and BAD_SNIPPETS[snippet] in findings[0], findings


GOOD_SNIPPETS = [
    "torch.load(path, mmap=True, weights_only=True, map_location='cpu')",
    "np.load(path, mmap_mode='r', allow_pickle=False)",
    "np.load(path, allow_pickle=allow_pickle)",  # a parameter: the signature test checks its default
    "model.eval()",
    "text = 'AutoModel.from_pretrained(repo, trust_remote_code=True)'",  # card text shown to users, not a call
    "AutoModel.from_pretrained(repo, trust_remote_code=False)",
    "import json\njson.loads(text)",
]


@pytest.mark.parametrize("snippet", GOOD_SNIPPETS)
def test_the_scanner_passes_safe_code(snippet):
    assert scan_source(snippet) == []


def test_the_allowlist_is_per_function():
    snippet = "def _load_records(path, dtype):\n    return np.load(path, allow_pickle=True)\n"
    assert scan_source(snippet, "index_builder/google_checkpoint.py") == []
    assert scan_source(snippet, "index_builder/other.py") != []
    assert scan_source(snippet.replace("_load_records", "_other"), "index_builder/google_checkpoint.py") != []


# ------------------------------------------------------------------------------------------------ SECURITY.md
ROW_SITE = re.compile(r"^\|\s*`(?P<path>[\w./-]+\.py):(?P<function>[\w.<>]+)`")


def security_rows(text: str) -> list[tuple[str, str]]:
    """(file, function) of each table row of SECURITY.md whose first cell is `path.py:function`."""
    return [(match["path"], match["function"]) for line in text.splitlines() if (match := ROW_SITE.match(line))]


def _defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))} | {"<module>"}


def test_security_rows_name_existing_files_and_functions():
    rows = security_rows(SECURITY.read_text(encoding="utf-8"))
    assert len(rows) >= 10, "SECURITY.md lost its table (rows start with | `path.py:function` |)"
    problems = []
    for path, function in rows:
        if not (ROOT / path).is_file():
            problems.append(f"{path} does not exist")
            continue
        missing = [part for part in function.split(".") if part not in _defined_names(ROOT / path)]
        if missing:
            problems.append(f"{path}:{function}: {missing} not defined in the file")
    assert problems == [], "\n".join(problems)


def test_every_loader_site_has_a_security_row():
    rows = set(security_rows(SECURITY.read_text(encoding="utf-8")))
    documented = {(path, function.rsplit(".", 1)[-1]) for path, function in rows}
    missing = []
    for path in source_files():
        for site_path, scopes, line, name in loader_sites(path.read_text(encoding="utf-8"), relative(path)):
            if not any((site_path, scope) in documented for scope in scopes or ("<module>",)):
                missing.append(f"{site_path}:{line} ({name} in {'.'.join(scopes) or '<module>'})")
    assert missing == [], "add a SECURITY.md row for:\n" + "\n".join(missing)


def test_the_row_parser_and_site_finder_can_fail(tmp_path):
    assert security_rows("| `index_builder/google_checkpoint.py:_records_dtype` | x |\n| module | reads |\n") == [
        ("index_builder/google_checkpoint.py", "_records_dtype")]
    sites = loader_sites("def f(p):\n    def g():\n        return faiss.read_index(p)\n    return g\n", "x.py")
    assert [(scopes, name) for _, scopes, _, name in sites] == [(("f", "g"), "faiss.read_index")]
