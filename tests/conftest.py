"""Test-wide settings: no test may reach the network, and Hugging Face caches live in temporary folders.

huggingface_hub reads its environment once at import, so the variables are set here before anything imports it,
and each test then points `huggingface_hub.constants.HF_HUB_CACHE` at a fresh folder of its own.
"""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="realm-tests-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants  # noqa: E402


@pytest.fixture(autouse=True)
def hub_cache(tmp_path_factory, monkeypatch):
    """An empty Hub cache for this test (populate it with tests.helpers.populate_hub_cache)."""
    cache = tmp_path_factory.mktemp("hub_cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


from tests.hub_server import fake_hub  # noqa: E402,F401  (the fake Hub fixture, for every test that asks for it)
