"""Numerical parity with transformers 4.57.6 on legacy checkpoints it wrote (tests/fixtures/make_parity_fixtures.py)."""

import pytest
import torch

from modeling_realm import (
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmScorer,
)
from tests.helpers import PARITY, assert_close, load_io

CONFIGS = ["tiny", "google"]


def load_legacy(model_class, config_name, **kwargs):
    model, info = model_class.from_pretrained(PARITY / config_name / model_class.__name__, output_loading_info=True,
                                              **kwargs)
    assert info["missing_keys"] == set(), info
    assert info["unexpected_keys"] == set(), info
    assert info["mismatched_keys"] == set(), info
    return model.eval()


@pytest.mark.parametrize("config_name", CONFIGS)
def test_embedder_parity(config_name):
    model = load_legacy(RealmEmbedder, config_name, attn_implementation="eager")
    inputs, expected = load_io(PARITY / config_name / "RealmEmbedder")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert_close(out.projected_score, expected["projected_score"], what="projected_score")
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for i, state in enumerate(out.hidden_states):
        assert_close(state, expected[f"hidden_states.{i}"], what=f"hidden_states.{i}")
    for i, attention in enumerate(out.attentions):
        assert_close(attention, expected[f"attentions.{i}"], what=f"attentions.{i}")


@pytest.mark.parametrize("config_name", CONFIGS)
def test_embedder_parity_default_attention(config_name):
    """The default (SDPA) attention gives the same numbers as 4.x's eager attention."""
    model = load_legacy(RealmEmbedder, config_name)
    inputs, expected = load_io(PARITY / config_name / "RealmEmbedder")
    with torch.no_grad():
        projected = model(**inputs).projected_score
    assert_close(projected, expected["projected_score"], what="projected_score")


@pytest.mark.parametrize("config_name", CONFIGS)
def test_scorer_parity(config_name):
    model = load_legacy(RealmScorer, config_name)
    assert model.query_embedder is model.embedder
    inputs, expected = load_io(PARITY / config_name / "RealmScorer")
    with torch.no_grad():
        out = model(**inputs)
    for name in ("relevance_score", "query_score", "candidate_score"):
        assert_close(getattr(out, name), expected[name], what=name)


@pytest.mark.parametrize("config_name", CONFIGS)
def test_knowledge_aug_encoder_parity(config_name):
    model = load_legacy(RealmKnowledgeAugEncoder, config_name)
    assert model.cls.predictions.decoder.weight is model.realm.embeddings.word_embeddings.weight
    inputs, expected = load_io(PARITY / config_name / "RealmKnowledgeAugEncoder")
    with torch.no_grad():
        out = model(**inputs)
        without_mask = model(**{k: v for k, v in inputs.items() if k != "mlm_mask"})
        without_labels = model(**{k: v for k, v in inputs.items() if k not in ("labels", "mlm_mask")})
    assert_close(out.loss, expected["loss"], what="loss")
    assert_close(out.logits, expected["logits"], what="logits")
    assert_close(without_mask.loss, expected["loss_no_mlm_mask"], what="loss without mlm_mask")
    assert without_labels.loss is None
    assert_close(without_labels.logits, expected["logits_no_labels"], what="logits without labels")


@pytest.mark.parametrize("config_name", CONFIGS)
def test_reader_parity(config_name):
    model = load_legacy(RealmReader, config_name)
    inputs, expected = load_io(PARITY / config_name / "RealmReader")
    with torch.no_grad():
        out = model(**inputs)
        unlabeled = model(**{k: v for k, v in inputs.items()
                             if k not in ("start_positions", "end_positions", "has_answers")})
        none_correct = model(**{**inputs, "has_answers": torch.zeros_like(inputs["has_answers"]),
                                "start_positions": torch.full_like(inputs["start_positions"], -1),
                                "end_positions": torch.full_like(inputs["end_positions"], -1)})
    for name in ("loss", "retriever_loss", "reader_loss"):
        assert_close(getattr(out, name), expected[name], what=name)
    for name in ("retriever_correct", "reader_correct", "block_idx", "candidate", "start_pos", "end_pos"):
        assert torch.equal(getattr(out, name), expected[name]), name
    for name in ("block_idx", "candidate", "start_pos", "end_pos"):
        assert torch.equal(getattr(unlabeled, name), expected[f"nolabels_{name}"]), name
    assert unlabeled.loss is None
    for name in ("loss", "retriever_loss", "reader_loss"):
        assert_close(getattr(none_correct, name), expected[f"nonecorrect_{name}"], what=f"no answer {name}")


@pytest.mark.parametrize("config_name", CONFIGS)
def test_openqa_components_parity(config_name):
    """The question embedder of RealmForOpenQA and its block_emb equal 4.x's."""
    model = load_legacy(RealmForOpenQA, config_name)
    legacy = torch.load(PARITY / config_name / "RealmForOpenQA" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.block_emb, legacy["block_emb"])
    for q in range(3):
        inputs, expected = load_io(PARITY / config_name / "RealmForOpenQA", prefix=f"q{q}.")
        with torch.no_grad():
            embedded = model.embed_questions(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        assert_close(embedded, expected["question_projection"], what="question embedding")


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmScorer, RealmReader])
def test_return_dict_false_gives_4x_tuple_order(model_class):
    model = load_legacy(model_class, "tiny")
    inputs, expected = load_io(PARITY / "tiny" / model_class.__name__)
    with torch.no_grad():
        as_tuple = model(**inputs, return_dict=False)
        as_output = model(**inputs)
    assert isinstance(as_tuple, tuple)
    assert len(as_tuple) == len(as_output.to_tuple())
    first = {"RealmEmbedder": "projected_score", "RealmScorer": "relevance_score", "RealmReader": "loss"}
    assert_close(as_tuple[0], expected[first[model_class.__name__]], what="first tuple element")


def test_fused_tanh_gelu_computes_gelu_new():
    """Backbones run REALM's gelu_new with torch's fused tanh GELU: same outputs, config unchanged."""
    from transformers.activations import GELUTanh
    from transformers.models.bert.modeling_bert import BertModel

    from modeling_realm.models.pretrained import build_backbone
    from tests.helpers import perturb_, tiny_config

    config = tiny_config(hidden_act="gelu_new")
    fused = perturb_(build_backbone(config), scale=0.5).eval()
    spelled_out = BertModel(config, add_pooling_layer=True).eval()
    spelled_out.load_state_dict(fused.state_dict())
    assert all(isinstance(layer.intermediate.intermediate_act_fn, GELUTanh) for layer in fused.encoder.layer)
    assert not isinstance(spelled_out.encoder.layer[0].intermediate.intermediate_act_fn, GELUTanh)
    assert config.hidden_act == "gelu_new"
    input_ids = torch.randint(0, config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = fused(input_ids=input_ids), spelled_out(input_ids=input_ids)
    assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, what="last_hidden_state")
    other = build_backbone(tiny_config(hidden_act="gelu"))  # other activations are left as configured
    assert not isinstance(other.encoder.layer[0].intermediate.intermediate_act_fn, GELUTanh)
