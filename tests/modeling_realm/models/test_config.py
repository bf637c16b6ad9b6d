"""RealmConfig: google's field set, 4.x defaults, Auto registration and validation errors naming the field."""

import json

import pytest
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig

from modeling_realm import RealmConfig
from tests.helpers import PARITY

FOURX_DEFAULTS = dict(vocab_size=30522, hidden_size=768, retriever_proj_size=128, num_hidden_layers=12,
                      num_attention_heads=12, num_candidates=8, intermediate_size=3072, hidden_act="gelu_new",
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                      type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, span_hidden_size=256,
                      max_span_width=10, reader_layer_norm_eps=1e-3, reader_beam_size=5, reader_seq_len=320,
                      num_block_records=13353718, searcher_beam_size=5000, pad_token_id=1, bos_token_id=0,
                      eos_token_id=2)


def test_defaults_are_those_of_transformers_4():
    config = RealmConfig()
    assert config.model_type == "realm"
    for name, value in FOURX_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.searcher_seq_len == 64 and config.use_scann is False
    assert config.separate_query_embedder is False


def test_every_field_of_a_google_config_is_read():
    path = PARITY / "google" / "RealmReader" / "config.json"
    fields = json.loads(path.read_text())
    config = AutoConfig.from_pretrained(path.parent)
    assert isinstance(config, RealmConfig)
    for name, value in fields.items():
        if name in ("torch_dtype", "transformers_version", "model_type"):
            continue
        assert getattr(config, name) == value, name
    assert str(config.dtype) == "torch.float32"


def test_round_trip_through_json(tmp_path):
    config = RealmConfig(hidden_size=64, num_attention_heads=4, separate_query_embedder=True, searcher_seq_len=32)
    config.save_pretrained(tmp_path)
    again = RealmConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("fields, names", [
    (dict(hidden_size=33, num_attention_heads=4), ["hidden_size", "num_attention_heads"]),
    (dict(num_candidates=0), ["num_candidates"]),
    (dict(hidden_dropout_prob=1.5), ["hidden_dropout_prob"]),
    (dict(hidden_act="swishy"), ["hidden_act"]),
    (dict(reader_beam_size=10, searcher_beam_size=5), ["reader_beam_size", "searcher_beam_size"]),
    (dict(max_span_width=40, reader_seq_len=32), ["max_span_width", "reader_seq_len"]),
    (dict(hidden_size="768"), ["hidden_size"]),
])
def test_validation_errors_name_the_field(fields, names):
    with pytest.raises(StrictDataclassError) as error:
        RealmConfig(**fields)
    for name in names:
        assert name in str(error.value)


def test_bad_field_in_a_config_file_is_named(tmp_path):
    fields = json.loads((PARITY / "tiny" / "RealmEmbedder" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "retriever_proj_size": -4}))
    with pytest.raises(StrictDataclassError, match="retriever_proj_size"):
        AutoConfig.from_pretrained(tmp_path)


def test_relative_position_embeddings_are_refused_not_ignored():
    """transformers 4.x built distance embeddings for these; transformers 5's BERT does not, so the model would
    silently compute an absolute-position model."""
    for kind in ("relative_key", "relative_key_query"):
        with pytest.raises(StrictDataclassError, match=f"position_embedding_type='{kind}' is not supported"):
            RealmConfig(position_embedding_type=kind)
    assert RealmConfig(position_embedding_type="absolute").position_embedding_type == "absolute"


def test_standard_config_keys_are_not_reported_but_misspellings_are(caplog):
    standard = dict(sep_token_id=102, cls_token_id=101, tokenizer_class="RealmTokenizer", prefix="",
                    finetuning_task="qa", task_specific_params={}, decoder_start_token_id=0, pruned_heads={},
                    torchscript=False)
    with caplog.at_level("WARNING"):
        config = RealmConfig(**standard)
    assert "unknown field" not in caplog.text
    assert config.sep_token_id == 102 and config.tokenizer_class == "RealmTokenizer"
    with caplog.at_level("WARNING"):
        RealmConfig(retriever_proj_sise=64)
    assert "unknown field 'retriever_proj_sise': did you mean 'retriever_proj_size'" in caplog.text
