"""Shared test helpers: fixture paths, tiny configs, offline Hub caches and google-style checkpoint layouts."""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PARITY = FIXTURES / "parity"
VOCAB = FIXTURES / "vocab.txt"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The tiny config of ARCHITECTURE.md (tests): hidden 32, 2 layers, projection 16, k 2.
TINY = dict(vocab_size=106, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            retriever_proj_size=16, num_candidates=2, max_position_embeddings=64, span_hidden_size=8,
            max_span_width=3, reader_beam_size=2, reader_seq_len=24, num_block_records=6, searcher_beam_size=3,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def vocab_ids(*tokens):
    """Ids of `tokens` in the fixture vocabulary (its line numbers)."""
    vocab = VOCAB.read_text().splitlines()
    return [vocab.index(token) for token in tokens]


def tiny_config(**overrides):
    from modeling_realm import RealmConfig

    return RealmConfig(**{**TINY, **overrides})


def load_io(directory: Path, prefix: str = ""):
    """Inputs and outputs of a parity fixture as two dicts (keys without the `in.` / `out.` prefix)."""
    tensors = load_file(str(directory / "io.safetensors"))
    inputs = {k[len(prefix) + 3:]: v for k, v in tensors.items() if k.startswith(prefix + "in.")}
    outputs = {k[len(prefix) + 4:]: v for k, v in tensors.items() if k.startswith(prefix + "out.")}
    return inputs, outputs


# Which 4.x class each google/realm-* repository holds.
GOOGLE_REPOS = {
    "google/realm-cc-news-pretrained-embedder": "RealmEmbedder",
    "google/realm-cc-news-pretrained-encoder": "RealmKnowledgeAugEncoder",
    "google/realm-cc-news-pretrained-scorer": "RealmScorer",
    "google/realm-cc-news-pretrained-openqa": "RealmForOpenQA",
    "google/realm-orqa-nq-openqa": "RealmForOpenQA",
    "google/realm-orqa-wq-openqa": "RealmForOpenQA",
    "google/realm-orqa-nq-reader": "RealmReader",
    "google/realm-orqa-wq-reader": "RealmReader",
}

GOOGLE_TOKENIZER_CONFIG = {
    "do_lower_case": True, "do_basic_tokenize": True, "never_split": None, "unk_token": "[UNK]",
    "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    "tokenize_chinese_chars": True, "strip_accents": None, "model_max_length": 512,
    "special_tokens_map_file": None, "tokenizer_class": "RealmTokenizer",
}


def write_google_layout(repo_id: str, directory: Path) -> Path:
    """Write a google/realm-* style repository (legacy weights, 4.16-era config and tokenizer files).

    The weights and config are the "google" parity fixture of the class that repository holds, so the config
    carries every field google's files have (searcher_seq_len, use_scann, use_cache, torch_dtype, ...).
    """
    class_name = GOOGLE_REPOS[repo_id]
    directory.mkdir(parents=True, exist_ok=True)
    source = PARITY / "google" / class_name
    config = json.loads((source / "config.json").read_text())
    config.update({"_name_or_path": repo_id, "transformers_version": "4.16.0.dev0"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(source / "pytorch_model.bin", directory / "pytorch_model.bin")
    shutil.copy(VOCAB, directory / "vocab.txt")
    (directory / "tokenizer_config.json").write_text(json.dumps({**GOOGLE_TOKENIZER_CONFIG, "name_or_path": repo_id}))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {k: GOOGLE_TOKENIZER_CONFIG[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}))
    return directory


def populate_hub_cache(cache_dir: Path, repo_id: str, files_dir: Path, repo_type: str = "model") -> None:
    """Lay `files_dir` out as huggingface_hub's cache for `repo_id`, so HF_HUB_OFFLINE=1 resolves it.

    This exercises the real download-path resolution of huggingface_hub without a network.
    """
    folder = cache_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    snapshot = folder / "snapshots" / revision
    shutil.copytree(files_dir, snapshot, dirs_exist_ok=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)


def assert_close(actual, expected, atol=1e-5, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = (actual.detach().float() - expected.float()).abs().max().item() if actual.numel() else 0.0
    assert difference <= atol, f"{what}: max difference {difference} > {atol}"


def perturb_(model, scale=0.05, seed=0):
    """Move every parameter off its initial value (LayerNorm weights off 1, biases off 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model
