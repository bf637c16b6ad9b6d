"""push_to_hub / save_pretrained share a REALM model: safetensors, config.json with an auto_map, the model's code, the
tokenizer and a model card, so the repository loads with realm-hf and without it.

Uploads go through huggingface_hub to the local fake Hub (tests/hub_server.py); downloads go through huggingface_hub's
own resolution (`from_pretrained` on a repo id). The "without realm-hf" checks run a second Python in isolated mode
(`-I`: no script folder, working directory or PYTHON* variables on sys.path) whose imports of modeling_realm,
tokenization and index_builder raise ModuleNotFoundError (a `sys.meta_path` guard ahead of the editable install's
finder) and whose sockets may only reach 127.0.0.1.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

import modeling_realm
from modeling_realm.hub.remote_code import local_imports
from modeling_realm.models import RealmEmbedder, RealmKnowledgeAugEncoder, RealmReader, RealmRetriever, RealmScorer
from modeling_realm.openqa import RealmForOpenQA
from tests.helpers import PARITY, VOCAB, assert_close, load_io, perturb_, tiny_config
from tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[3]
PACKAGE_DIR = Path(modeling_realm.__file__).resolve().parent
PROJECT_IMPORT = re.compile(r"^(\s*from )(?:modeling_realm|tokenization)(?:\.\w+)*\.(\w+)( import)", re.MULTILINE)


def bundled_source(name: str) -> bytes:
    """The package module `name` (a file name) as the code bundle holds it: the package's modules import each other
    absolutely (`from modeling_realm.models.heads import x`), and the flat bundle imports the copied file
    (`from .heads import x`); nothing else changes."""
    (path,) = [p for root in (PACKAGE_DIR, PACKAGE_DIR.parent / "tokenization") for p in root.rglob(name)]
    return PROJECT_IMPORT.sub(r"\1.\2\3", path.read_text(encoding="utf-8")).encode("utf-8")
TEXTS = ["The quick brown fox.", "who wrote hamlet?"]
CLASSES = [RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader, RealmRetriever, RealmForOpenQA]
# Runs in the second Python: load each job's model (and tokenizer) through transformers' remote-code path, run it on
# the saved inputs, save its outputs, and report which classes and modules were used.
NO_PACKAGE_SCRIPT = r'''
import importlib.abc, json, socket, sys

BLOCKED = {"modeling_realm", "tokenization", "index_builder", "examples"}


class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, BlockProject())
_connect = socket.socket.connect


def loopback_only(self, address):
    if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"the test allows only loopback connections, not {address}")
    return _connect(self, address)


socket.socket.connect = loopback_only

import torch
from safetensors.torch import load_file, save_file
import transformers

spec = json.loads(open(sys.argv[1]).read())
report = {}
for job in spec["jobs"]:
    model = getattr(transformers, job["auto_class"]).from_pretrained(job["source"], trust_remote_code=True).eval()
    with torch.no_grad():
        outputs = model(**load_file(job["inputs"]), **job["flags"], return_dict=True)
    flat = {}
    for key, value in outputs.items():
        for i, tensor in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            flat[f"{key}.{i}"] = tensor.contiguous()
    save_file(flat, job["outputs"])
    entry = {"class": type(model).__name__, "module": type(model).__module__,
             "config_module": type(model.config).__module__}
    if job["texts"]:
        tokenizer = transformers.AutoTokenizer.from_pretrained(job["source"], trust_remote_code=True)
        entry.update(tokenizer_class=type(tokenizer).__name__, tokenizer_module=type(tokenizer).__module__,
                     ids=tokenizer(job["texts"])["input_ids"])
    report[job["name"]] = entry
project = [name for name, module in sys.modules.items() if name.split(".")[0] in BLOCKED or (
    str(getattr(module, "__file__", None) or "").startswith(spec["project_root"])
    and not str(module.__file__).startswith(sys.prefix))]
with open(spec["report"], "w") as stream:
    json.dump({"models": report, "project_modules": project}, stream)
'''


def forward_inputs(class_name: str) -> tuple[dict, dict]:
    """Tensor inputs and non-tensor flags of a deterministic forward of `class_name` on the tiny fixtures."""
    if class_name == "RealmRetriever":
        inputs, _ = load_io(PARITY / "tiny" / "RealmScorer")
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                "block_input_ids": inputs["candidate_input_ids"],
                "block_attention_mask": inputs["candidate_attention_mask"]}, {}
    if class_name == "RealmForOpenQA":
        inputs, _ = load_io(PARITY / "tiny" / "RealmForOpenQA", prefix="q0.")
        block_mask = (~inputs["special_tokens_mask"].bool()) & inputs["reader_token_type_ids"].bool()
        return {"input_ids": inputs["input_ids"], "block_ids": inputs["block_ids"][None],
                "reader_input_ids": inputs["reader_input_ids"][None], "block_mask": block_mask[None]}, {}
    inputs, _ = load_io(PARITY / "tiny" / class_name)
    flags = {"output_hidden_states": True} if class_name in ("RealmEmbedder", "RealmReader",
                                                             "RealmKnowledgeAugEncoder") else {}
    return inputs, flags


def flat_outputs(model, class_name: str) -> dict:
    """`{name.i: tensor}` of the model's outputs on `forward_inputs(class_name)` (tuples and lists flattened)."""
    inputs, flags = forward_inputs(class_name)
    with torch.no_grad():
        outputs = model.eval()(**inputs, **flags, return_dict=True)
    flat = {}
    for key, value in outputs.items():
        for i, tensor in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            flat[f"{key}.{i}"] = tensor
    return flat


def tiny_model(model_class, seed=0):
    model = perturb_(model_class(tiny_config()), seed=seed).eval()
    if model_class is RealmForOpenQA:
        model.block_emb.normal_()
    return model


@pytest.fixture
def tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


def run_without_package(tmp_path: Path, jobs: list[dict]) -> dict:
    """Run NO_PACKAGE_SCRIPT on `jobs` (source, auto_class, class_name, texts) and return its report."""
    work = tmp_path / "no-package"
    work.mkdir()
    spec_jobs = []
    for job in jobs:
        inputs, flags = forward_inputs(job["class_name"])
        inputs_path = work / f"{job['name']}.inputs.safetensors"
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_path))
        spec_jobs.append({**job, "inputs": str(inputs_path), "flags": flags,
                          "outputs": str(work / f"{job['name']}.outputs.safetensors")})
    spec = {"jobs": spec_jobs, "report": str(work / "report.json"), "project_root": str(ROOT) + os.sep}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "check.py").write_text(NO_PACKAGE_SCRIPT)
    env = {**os.environ, "HF_HUB_CACHE": str(work / "hub-cache"), "HF_MODULES_CACHE": str(work / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-I", str(work / "check.py"), str(work / "spec.json")], cwd=work,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((work / "report.json").read_text())
    assert report["project_modules"] == [], "the second Python imported project code"
    for job in spec_jobs:
        report["models"][job["name"]]["outputs"] = load_file(job["outputs"])
    return report


def unanswered(fake_hub) -> list:
    """Requests the fake Hub had no answer for."""
    return list(fake_hub.unhandled)


def assert_same_outputs(got: dict, expected: dict, what: str):
    assert set(got) == set(expected), f"{what}: {sorted(got)} != {sorted(expected)}"
    for name, value in expected.items():
        assert_close(got[name], value, atol=1e-6, what=f"{what} {name}")


# ---------------------------------------------------------------------------------------------------- the upload


def test_push_to_hub_writes_weights_config_code_tokenizer_and_card(fake_hub, tokenizer):
    model = tiny_model(RealmEmbedder)
    commits_before = sum(method == "POST" and "/commit/" in path for method, path in fake_hub.requests)
    model.push_to_hub("user/tiny-embedder", tokenizer=tokenizer)
    files = fake_hub.files("user/tiny-embedder")
    assert sum(method == "POST" and "/commit/" in path for method, path in fake_hub.requests) == commits_before + 1
    code = ["embedder.py", "configuration.py", "heads.py", "outputs.py", "pretrained.py"]  # no span or loss code
    expected = {"model.safetensors", "config.json", "README.md", "tokenizer.json", "tokenizer_config.json",
                "tokenization_realm.py", *code}
    assert expected <= set(files), sorted(expected - set(files))
    assert not any(name.endswith(".bin") for name in files)
    for name in code:  # copies of the package's modules, their project imports made relative
        assert files[name] == bundled_source(name), name
    config = json.loads(files["config.json"])
    assert config["model_type"] == "realm" and config["architectures"] == ["RealmEmbedder"]
    assert config["auto_map"] == {"AutoConfig": "configuration.RealmConfig", "AutoModel": "embedder.RealmEmbedder"}
    tokenizer_config = json.loads(files["tokenizer_config.json"])
    assert tokenizer_config["auto_map"] == {"AutoTokenizer": [None, "tokenization_realm.RealmTokenizerFast"]}
    assert unanswered(fake_hub) == []


def test_model_card_says_what_the_model_is_and_how_to_load_it(fake_hub, tokenizer):
    tiny_model(RealmEmbedder).push_to_hub("user/tiny-embedder", tokenizer=tokenizer, tags=["my-tag"])
    card = ModelCard(fake_hub.files("user/tiny-embedder")["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "feature-extraction"
    assert {"realm", "retrieval", "my-tag"} <= set(card.data.tags)
    for text in ("`RealmEmbedder`", "2 layers, hidden size 32", "16-d", "pip install realm-hf",
                 "from modeling_realm import RealmEmbedder", 'RealmEmbedder.from_pretrained("user/tiny-embedder")',
                 'RealmTokenizerFast.from_pretrained("user/tiny-embedder")',
                 'AutoModel.from_pretrained("user/tiny-embedder", trust_remote_code=True)',
                 'AutoTokenizer.from_pretrained("user/tiny-embedder", trust_remote_code=True)'):
        assert text in card.text, text


@pytest.mark.parametrize("model_class", CLASSES)
def test_every_class_saves_shareable_code(model_class, tmp_path):
    """The copied modules import only installable packages, and every model class gets its auto_map."""
    model_class(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    module = config["auto_map"]["AutoModel"].split(".")[0]
    assert config["auto_map"]["AutoModel"] == f"{module}.{model_class.__name__}"
    assert (tmp_path / f"{module}.py").read_bytes() == bundled_source(f"{module}.py")
    assert local_imports(sorted(tmp_path.glob("*.py"))) == {}
    card = ModelCard((tmp_path / "README.md").read_text())
    assert f"`{model_class.__name__}`" in card.text and "trust_remote_code=True" in card.text
    if model_class is RealmKnowledgeAugEncoder:
        assert config["auto_map"]["AutoModelForMaskedLM"] == "encoder.RealmKnowledgeAugEncoder"
        assert card.data.pipeline_tag == "fill-mask"


def test_project_imports_are_rewritten_as_imports_of_the_copied_files(tmp_path):
    """answering.py imports from `tokenization.<module>`: the module is copied and the import made relative."""
    RealmForOpenQA(tiny_config()).save_pretrained(tmp_path)
    source = (PACKAGE_DIR / "openqa" / "answering.py").read_text().splitlines()
    copy = (tmp_path / "answering.py").read_text().splitlines()
    changed = [(a, b) for a, b in zip(source, copy, strict=True) if a != b and a.startswith("from tokenization.")]
    assert changed, "answering.py no longer imports from tokenization; pick another module for this test"
    for original, rewritten in changed:
        assert rewritten == original.replace("from tokenization.", "from .", 1)
        module = original.split()[1]
        copied = (tmp_path / f"{module.split('.')[-1]}.py").read_text()  # its own project imports made relative too
        assert copied == Path(importlib.util.find_spec(module).origin).read_text().replace("from tokenization.",
                                                                                           "from .")


# --------------------------------------------------------------------------------------------- loading it back


def test_pushed_repo_reloads_through_the_package(fake_hub, tokenizer):
    model = tiny_model(RealmEmbedder)
    model.push_to_hub("user/tiny-embedder", tokenizer=tokenizer)
    expected = flat_outputs(model, "RealmEmbedder")
    reloaded = RealmEmbedder.from_pretrained("user/tiny-embedder")
    auto = AutoModel.from_pretrained("user/tiny-embedder")
    assert type(auto) is RealmEmbedder  # the package's class, not the repository's copy
    for got in (reloaded, auto):
        assert_same_outputs(flat_outputs(got, "RealmEmbedder"), expected, "package reload")
    auto_tokenizer = AutoTokenizer.from_pretrained("user/tiny-embedder")
    assert type(auto_tokenizer) is RealmTokenizerFast
    assert auto_tokenizer(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]


def test_pushed_repos_load_from_the_hub_without_the_package(fake_hub, tokenizer, tmp_path):
    models = {"embedder": tiny_model(RealmEmbedder), "reader": tiny_model(RealmReader, seed=1)}
    jobs = []
    for name, model in models.items():
        model.push_to_hub(f"user/tiny-{name}", tokenizer=tokenizer)
        jobs.append({"name": name, "source": f"user/tiny-{name}", "auto_class": "AutoModel",
                     "class_name": type(model).__name__, "texts": TEXTS})
    report = run_without_package(tmp_path, jobs)
    expected_ids = tokenizer(TEXTS)["input_ids"]
    for name, model in models.items():
        entry = report["models"][name]
        assert entry["class"] == type(model).__name__
        for key in ("module", "config_module", "tokenizer_module"):
            assert entry[key].startswith("transformers_modules."), entry[key]
        assert entry["tokenizer_class"] == "RealmTokenizerFast" and entry["ids"] == expected_ids
        assert_same_outputs(entry["outputs"], flat_outputs(model, type(model).__name__), f"{name} without package")
    downloads = {path for method, path in fake_hub.requests if method == "GET" and "/resolve/" in path}
    assert any(path.endswith("/embedder.py") for path in downloads)
    assert any(path.endswith("/reader.py") for path in downloads)
    assert unanswered(fake_hub) == []


def test_every_class_loads_from_a_folder_without_the_package(tmp_path):
    jobs = []
    models = {}
    for model_class in CLASSES:
        name = model_class.__name__
        models[name] = tiny_model(model_class)
        models[name].save_pretrained(tmp_path / name)
        auto_class = "AutoModelForMaskedLM" if model_class is RealmKnowledgeAugEncoder else "AutoModel"
        jobs.append({"name": name, "source": str(tmp_path / name), "auto_class": auto_class, "class_name": name,
                     "texts": []})
    mean_pooled = perturb_(RealmRetriever(tiny_config(retriever_pooling="mean")), seed=1).eval()
    mean_pooled.save_pretrained(tmp_path / "mean-pooled")
    jobs.append({"name": "mean-pooled", "source": str(tmp_path / "mean-pooled"), "auto_class": "AutoModel",
                 "class_name": "RealmRetriever", "texts": []})
    report = run_without_package(tmp_path, jobs)
    for name, model in models.items():
        entry = report["models"][name]
        assert entry["class"] == name and entry["module"].startswith("transformers_modules.")
        assert_same_outputs(entry["outputs"], flat_outputs(model, name), f"{name} without package")
    assert_same_outputs(report["models"]["mean-pooled"]["outputs"], flat_outputs(mean_pooled, "RealmRetriever"),
                        "mean-pooled RealmRetriever without package")


# ------------------------------------------------------------------------------------------ other entry points


def test_save_pretrained_with_push_to_hub_keeps_the_realm_card(fake_hub, tmp_path):
    model = tiny_model(RealmReader)
    model.save_pretrained(tmp_path / "tiny-reader", push_to_hub=True, repo_id="user/tiny-reader")
    files = fake_hub.files("user/tiny-reader")
    assert files["README.md"] == (tmp_path / "tiny-reader" / "README.md").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "question-answering"
    assert 'RealmReader.from_pretrained("user/tiny-reader")' in card.text
    assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == "reader.RealmReader"
    assert "reader.py" in files and "model.safetensors" in files


def test_model_card_false_leaves_the_repository_readme(fake_hub):
    api = HfApi()
    api.create_repo("user/tiny-scorer")
    api.upload_file(path_or_fileobj=b"# my own card\n", path_in_repo="README.md", repo_id="user/tiny-scorer")
    tiny_model(RealmScorer).push_to_hub("user/tiny-scorer", model_card=False)
    files = fake_hub.files("user/tiny-scorer")
    assert files["README.md"] == b"# my own card\n"
    assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == "scorer.RealmScorer"


class OutsideEmbedder(RealmEmbedder):
    """A subclass defined outside modeling_realm: its code cannot be shipped."""


def test_a_class_defined_elsewhere_saves_no_code_and_says_so(tmp_path, caplog):
    OutsideEmbedder(tiny_config()).save_pretrained(tmp_path)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    assert not list(tmp_path.glob("*.py"))
    assert "carries no model code" in (tmp_path / "README.md").read_text()
    assert "OutsideEmbedder is defined outside modeling_realm" in caplog.text
    assert RealmEmbedder.from_pretrained(tmp_path) is not None


def test_local_imports_flags_project_packages_outside_try_blocks(tmp_path):
    bad, guarded = tmp_path / "bad.py", tmp_path / "guarded.py"
    bad.write_text("import torch\n\n\ndef f():\n    from index_builder import BlockIndex\n    return BlockIndex\n")
    guarded.write_text("try:\n    from tokenization import RealmTokenizer\nexcept ImportError:\n    pass\n")
    assert local_imports([bad, guarded]) == {"bad.py": ["index_builder"]}


def test_tokenizer_argument_must_be_a_tokenizer(tmp_path):
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        RealmEmbedder(tiny_config()).save_pretrained(tmp_path, tokenizer="vocab.txt")
