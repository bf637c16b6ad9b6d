"""save_pretrained writes safetensors, and every class reloads with identical outputs."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from modeling_realm.models import RealmEmbedder, RealmKnowledgeAugEncoder, RealmReader, RealmRetriever, RealmScorer
from modeling_realm.openqa import RealmForOpenQA
from tests.helpers import PARITY, assert_close, load_io, perturb_, tiny_config


def outputs_of(model, class_name):
    """A deterministic forward of `model` on the tiny fixture inputs of `class_name`, as a dict of tensors."""
    with torch.no_grad():
        if class_name == "RealmRetriever":
            inputs, _ = load_io(PARITY / "tiny" / "RealmScorer")
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        block_input_ids=inputs["candidate_input_ids"],
                        block_attention_mask=inputs["candidate_attention_mask"])
            return {"relevance_score": out.relevance_score}
        if class_name == "RealmForOpenQA":
            inputs, _ = load_io(PARITY / "tiny" / "RealmForOpenQA", prefix="q0.")
            block_mask = (~inputs["special_tokens_mask"].bool()) & inputs["reader_token_type_ids"].bool()
            out = model(input_ids=inputs["input_ids"], block_ids=inputs["block_ids"][None],
                        reader_input_ids=inputs["reader_input_ids"][None], block_mask=block_mask[None])
            return {"reader_logits": out.reader_logits, "relevance_score": out.relevance_score}
        inputs, _ = load_io(PARITY / "tiny" / class_name)
        return {k: v for k, v in model(**inputs).items() if torch.is_tensor(v)}


CLASSES = [RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader, RealmRetriever, RealmForOpenQA]


@pytest.mark.parametrize("model_class", CLASSES)
def test_save_reload_identical(model_class, tmp_path):
    model = perturb_(model_class(tiny_config())).eval()
    if model_class is RealmForOpenQA:
        model.block_emb.normal_()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "pytorch_model.bin").exists()
    reloaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is model_class
    expected = outputs_of(model, model_class.__name__)
    for got in (outputs_of(reloaded.eval(), model_class.__name__), outputs_of(auto.eval(), model_class.__name__)):
        for name, value in expected.items():
            assert_close(got[name], value, atol=0, what=name)


@pytest.mark.parametrize("config_name", ["tiny", "google"])
@pytest.mark.parametrize("class_name", ["RealmEmbedder", "RealmScorer", "RealmKnowledgeAugEncoder", "RealmReader",
                                        "RealmForOpenQA"])
def test_legacy_checkpoint_resaved_as_safetensors(class_name, config_name, tmp_path):
    """A 4.x pytorch_model.bin loads, saves as safetensors, and the safetensors copy loads with no key surprises."""
    model_class = AutoModel.from_pretrained(PARITY / config_name / class_name).__class__
    legacy = model_class.from_pretrained(PARITY / config_name / class_name).eval()
    legacy.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert not any(key.endswith("position_ids") for key in keys)
    assert not any(key.startswith("query_embedder.") for key in keys)
    resaved, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    state, restate = legacy.state_dict(), resaved.state_dict()
    assert state.keys() == restate.keys()
    for key in state:
        assert torch.equal(state[key], restate[key]), key


@pytest.mark.parametrize("model_class", [RealmScorer, RealmRetriever])
def test_separate_query_tower_saves_and_reloads(model_class, tmp_path):
    model = perturb_(model_class(tiny_config(separate_query_embedder=True)), seed=3).eval()
    assert model.query_embedder is not model.embedder
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["separate_query_embedder"] is True
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert reloaded.query_embedder is not reloaded.embedder
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_scorer_with_given_query_embedder_records_it_in_config(tmp_path):
    config = tiny_config()
    query_tower = perturb_(RealmEmbedder(config), seed=5)
    scorer = RealmScorer(config, query_embedder=query_tower)
    assert scorer.query_embedder is query_tower and scorer.config.separate_query_embedder
    scorer.save_pretrained(tmp_path)
    reloaded = RealmScorer.from_pretrained(tmp_path)
    assert torch.equal(reloaded.query_embedder.cls.dense.weight, query_tower.cls.dense.weight)
