"""The precision switch (`set_precision`, `from_pretrained(precision=...)`, `config.precision`): outputs close to
float32, the setting saved and applied again, float32 weights on disk, and the errors that name the fix."""

from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file

from modeling_realm import RealmConfig, RealmEmbedder, RealmForOpenQA, RealmReader
from modeling_realm.models.precision import Int8Linear, backbone_precision, set_precision
from tests.helpers import perturb_, tiny_config

LOW = ("bfloat16", "int8")


def reader_inputs(config, rows=2, seq_len=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (rows, seq_len), generator=generator)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 6:] = 1
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), token_type_ids=token_type_ids,
                block_mask=token_type_ids.bool(), relevance_score=torch.zeros(rows))


def span_logits(reader, inputs):
    """Span logits `[rows, num_spans]` of the spans inside the blocks (the others score the dtype's minimum)."""
    with torch.no_grad():
        logits = reader.score_spans(**inputs)[0]
    return logits[logits > -1e30]


def tiny_model(cls=RealmForOpenQA, seed=0, **overrides):
    torch.manual_seed(seed)
    model = cls(tiny_config(**overrides)).eval()
    perturb_(model, scale=0.05, seed=seed)
    return model


@pytest.mark.parametrize("precision", LOW)
def test_outputs_stay_close_to_float32(precision):
    model = tiny_model()
    inputs = reader_inputs(model.config)
    questions = inputs["input_ids"][:, :6]
    expected_logits = model.reader.score_spans(**inputs)[0].detach()
    expected_embeddings = model.embed_questions(questions).detach()
    model.set_precision(precision)
    logits = model.reader.score_spans(**inputs)[0].detach()
    embeddings = model.embed_questions(questions).detach()
    assert logits.dtype == embeddings.dtype == torch.float32  # heads, scores and retrieval stay float32
    inside = expected_logits > -1e30
    assert not torch.equal(logits, expected_logits)  # the switch did change how the products run
    torch.testing.assert_close(logits[inside], expected_logits[inside], atol=0.05, rtol=0.02)
    torch.testing.assert_close(embeddings, expected_embeddings, atol=0.05, rtol=0.02)
    assert logits.flatten().argmax() == expected_logits.flatten().argmax()


def test_the_switch_covers_the_reader_and_the_question_tower_only():
    model = tiny_model().set_precision("bfloat16")
    assert model.config.precision == "bfloat16" and backbone_precision(model) == "bfloat16"
    assert model.reader.realm.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert model.embedder.realm.encoder.layer[0].output.dense.weight.dtype == torch.bfloat16
    assert model.reader.qa_outputs.dense_intermediate.weight.dtype == torch.float32  # heads stay float32
    assert model.block_emb.dtype == torch.float32
    model.set_precision("int8")
    assert model.reader.realm.embeddings.word_embeddings.weight.dtype == torch.float32
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 2 * model.config.num_hidden_layers * 6  # q, k, v, attention out, intermediate, out
    assert model.reader.realm.pooler.dense.__class__ is torch.nn.Linear


def test_int8_keeps_the_float32_weights_and_float32_gives_them_back():
    model = tiny_model(RealmReader)
    inputs = reader_inputs(model.config)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    expected = span_logits(model, inputs)
    model.set_precision("int8")
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not torch.equal(span_logits(model, inputs), expected)
    model.set_precision("float32")
    assert torch.equal(span_logits(model, inputs), expected)


def test_int8_follows_weight_changes():
    model = tiny_model(RealmReader).set_precision("int8")
    inputs = reader_inputs(model.config)
    first = span_logits(model, inputs)
    with torch.no_grad():
        model.realm.encoder.layer[0].intermediate.dense.weight.mul_(3.0)
    changed = span_logits(model, inputs)
    fresh = tiny_model(RealmReader)
    with torch.no_grad():
        fresh.realm.encoder.layer[0].intermediate.dense.weight.mul_(3.0)
    assert not torch.equal(changed, first)
    assert torch.equal(changed, span_logits(fresh.set_precision("int8"), inputs))


@pytest.mark.parametrize("precision", LOW)
def test_the_setting_survives_save_and_load_with_float32_weights(precision, tmp_path):
    model = tiny_model().set_precision(precision)
    inputs = reader_inputs(model.config)
    expected = span_logits(model.reader, inputs)
    model.save_pretrained(tmp_path, model_card=False)
    assert {tensor.dtype for tensor in load_file(tmp_path / "model.safetensors").values()} == {torch.float32}
    assert backbone_precision(model) == precision  # saving left the model as it was
    loaded = RealmForOpenQA.from_pretrained(tmp_path)
    assert loaded.config.precision == precision and backbone_precision(loaded) == precision
    assert torch.equal(span_logits(loaded.reader, inputs), expected)
    exact = RealmForOpenQA.from_pretrained(tmp_path, precision="float32")
    assert exact.config.precision == "float32" and backbone_precision(exact) == "float32"


def test_float32_on_loading_reads_the_saved_weights_unrounded(tmp_path):
    model = tiny_model(RealmReader)
    model.config.precision = "bfloat16"  # a config that asks for bfloat16 over float32 weights
    model.save_pretrained(tmp_path, model_card=False)
    loaded = RealmReader.from_pretrained(tmp_path, precision="float32")
    assert backbone_precision(loaded) == "float32"
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())


def test_from_pretrained_precision_and_a_config_field(tmp_path):
    tiny_model(RealmEmbedder).save_pretrained(tmp_path, model_card=False)
    assert RealmEmbedder.from_pretrained(tmp_path, precision="int8").config.precision == "int8"
    assert backbone_precision(RealmEmbedder.from_pretrained(tmp_path, precision="bfloat16")) == "bfloat16"
    assert backbone_precision(RealmReader(tiny_config(precision="int8"))) == "int8"


def test_unknown_precisions_are_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'float16' is not supported; use one of 'float32', 'bfloat16', 'int8'"):
        tiny_model(RealmReader).set_precision("float16")
    with pytest.raises(StrictDataclassError, match="'fp8' is not supported"):
        RealmConfig(precision="fp8")
    tiny_model(RealmReader).save_pretrained(tmp_path, model_card=False)
    with pytest.raises(ValueError, match="'int4' is not supported"):
        RealmReader.from_pretrained(tmp_path, precision="int4")


@pytest.mark.parametrize("precision", LOW)
def test_a_switched_model_refuses_to_train(precision):
    model = tiny_model(RealmReader).set_precision(precision).train()
    with pytest.raises(RuntimeError, match=f"precision='{precision}', which is for inference only; call model.eval"
                                           r"\(\) to answer, or model.set_precision\('float32'\) before training"):
        model.score_spans(**reader_inputs(model.config))
    model.set_precision("float32")
    model.score_spans(**reader_inputs(model.config))[0].sum().backward()


def test_int8_is_refused_off_the_cpu():
    class OnAGpu(torch.nn.Module):  # no GPU here: a module whose parameters say they are on one
        def parameters(self, recurse=True):
            yield SimpleNamespace(device=torch.device("cuda", 0))

    with pytest.raises(ValueError, match=r"int8' runs on CPU only and the model is on \['cuda'\]; use "
                                         "precision='bfloat16' on a GPU"):
        set_precision(OnAGpu(), "int8")
    set_precision(OnAGpu(), "bfloat16")  # allowed on a GPU
    layer = Int8Linear(torch.nn.Linear(4, 4, device="meta")).eval()
    with pytest.raises(RuntimeError, match="int8' runs on CPU only .* on meta"):
        layer(torch.zeros(2, 4, device="meta"))
