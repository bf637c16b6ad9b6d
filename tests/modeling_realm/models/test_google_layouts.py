"""Each of the eight google/realm-* repository layouts loads into the class transformers 4.x used for it.

The layouts (legacy pytorch_model.bin with position-id buffers and duplicated tensors, 4.16-era config.json and
tokenizer files) are rebuilt from the 4.57.6 fixtures; the Hub path is exercised through huggingface_hub's own
cache resolution with HF_HUB_OFFLINE=1.
"""

import os

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

import modeling_realm
from tests.helpers import (
    GOOGLE_REPOS,
    PARITY,
    assert_close,
    load_io,
    populate_hub_cache,
    vocab_ids,
    write_google_layout,
)
from tokenization import RealmTokenizerFast


@pytest.mark.parametrize("repo_id", sorted(GOOGLE_REPOS))
def test_local_layout_loads_into_4x_class(repo_id, tmp_path):
    directory = write_google_layout(repo_id, tmp_path / repo_id.split("/")[1])
    model, info = AutoModel.from_pretrained(directory, output_loading_info=True)
    assert type(model).__name__ == GOOGLE_REPOS[repo_id]
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    config = AutoConfig.from_pretrained(directory)
    assert isinstance(config, modeling_realm.RealmConfig)
    assert config.searcher_seq_len == 64 and config.use_scann is False and config.reader_layer_norm_eps == 1e-3
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert isinstance(tokenizer, RealmTokenizerFast)
    assert tokenizer("hello world!").input_ids == vocab_ids("[CLS]", "hello", "world", "!", "[SEP]")


@pytest.mark.parametrize("repo_id", sorted(GOOGLE_REPOS))
def test_hub_id_loads_offline_from_cache(repo_id, tmp_path, hub_cache):
    files = write_google_layout(repo_id, tmp_path / "files")
    populate_hub_cache(hub_cache, repo_id, files)
    model = AutoModel.from_pretrained(repo_id)
    assert type(model).__name__ == GOOGLE_REPOS[repo_id]
    class_name = GOOGLE_REPOS[repo_id]
    by_class = getattr(modeling_realm, class_name).from_pretrained(repo_id)
    assert type(by_class).__name__ == class_name
    assert AutoTokenizer.from_pretrained(repo_id)("Paris").input_ids == vocab_ids("[CLS]", "paris", "[SEP]")


def test_layout_outputs_match_4x_after_hub_load(tmp_path, hub_cache):
    repo_id = "google/realm-cc-news-pretrained-embedder"
    populate_hub_cache(hub_cache, repo_id,
                       write_google_layout(repo_id, tmp_path / "files"))
    model = AutoModel.from_pretrained(repo_id).eval()
    inputs, expected = load_io(PARITY / "google" / "RealmEmbedder")
    with torch.no_grad():
        assert_close(model(**inputs).projected_score, expected["projected_score"], what="projected_score")


def test_scorer_checkpoint_loads_into_retriever(tmp_path):
    """RealmRetriever shares RealmScorer's state-dict layout, so google's scorer file loads straight into it."""
    directory = write_google_layout("google/realm-cc-news-pretrained-scorer", tmp_path / "scorer")
    retriever, info = modeling_realm.RealmRetriever.from_pretrained(directory, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    inputs, expected = load_io(PARITY / "google" / "RealmScorer")
    with torch.no_grad():
        query = retriever.eval().embed_queries(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    assert_close(query, expected["query_score"], what="query embeddings")


def test_legacy_weights_are_read_without_unpickling_code(tmp_path, monkeypatch):
    """pytorch_model.bin goes through torch.load(weights_only=True): a file with a pickled object is refused."""
    directory = write_google_layout("google/realm-orqa-nq-reader", tmp_path / "reader")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state["evil"] = _Executes()
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|pickle"):
        AutoModel.from_pretrained(directory)
    assert not (tmp_path / "pwned").exists()


class _Executes:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_unknown_keys_are_reported_but_position_ids_are_not(tmp_path, caplog):
    directory = write_google_layout("google/realm-orqa-nq-reader", tmp_path / "reader")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    assert "realm.embeddings.position_ids" in state
    state["reader_extra.weight"] = torch.zeros(3)
    del state["qa_outputs.dense_output.bias"]
    torch.save(state, directory / "pytorch_model.bin")
    transformers_logging.enable_propagation()
    try:
        _, info = modeling_realm.RealmReader.from_pretrained(directory, output_loading_info=True)
    finally:
        transformers_logging.disable_propagation()
    assert info["unexpected_keys"] == {"reader_extra.weight"}
    assert info["missing_keys"] == {"qa_outputs.dense_output.bias"}
    report = caplog.text
    assert "reader_extra.weight" in report and "qa_outputs.dense_output.bias" in report
    assert "position_ids" not in report
