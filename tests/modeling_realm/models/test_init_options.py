"""Starting points that keep what a pretrained encoder knows: pooling, projection init, the encoder's MLM head,
and the warnings for starts known to be poor (issue 16, item 1)."""

import json
import logging

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from torch.nn import functional as F
from transformers import BertConfig, BertForMaskedLM, BertModel

from modeling_realm import RealmConfig, RealmEmbedder, RealmKnowledgeAugEncoder, RealmRetriever
from modeling_realm.models.bert_init import init_from_bert
from modeling_realm.models.embedder import mean_pool
from modeling_realm.models.loading import load_retriever
from modeling_realm.models.mlm_head_init import HEAD_START_SCALE
from modeling_realm.models.projection_init import (
    DEFAULT_SCORE_SCALE,
    init_projection_from_corpus,
    init_projection_identity,
    principal_directions,
    set_score_scale,
)
from modeling_realm.pretraining import RealmPretrainingModel, freeze_unused_parameters
from tests.helpers import TINY, VOCAB, tiny_config
from tokenization import RealmTokenizerFast

WORDS = VOCAB.read_text().splitlines()[5:]


def ids_and_mask():
    """Two rows `[2, 6]`: the second is the first three tokens of the first, then padding (id 0)."""
    input_ids = torch.tensor([[2, 7, 9, 11, 13, 3], [2, 7, 3, 0, 0, 0]])
    return input_ids, (input_ids != 0).long()


def test_mean_pooling_averages_the_token_states_the_mask_keeps():
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config(retriever_pooling="mean")).eval()
    input_ids, mask = ids_and_mask()
    with torch.no_grad():
        states = embedder.realm(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [2, 6, 32]
        expected = embedder.cls(torch.stack([states[0].mean(0), states[1, :3].mean(0)]))
        got = embedder(input_ids=input_ids, attention_mask=mask).projected_score
        alone = embedder(input_ids=input_ids[1:, :3]).projected_score  # the second row without padding
        other_padding = embedder(input_ids=input_ids[1:].masked_fill(mask[1:] == 0, 50),
                                 attention_mask=mask[1:]).projected_score
        cls = RealmEmbedder(tiny_config()).eval()
        cls.load_state_dict(embedder.state_dict())
        cls_scores = cls(input_ids=input_ids, attention_mask=mask).projected_score
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1:], other_padding, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, cls_scores, atol=1e-3)


def test_mean_pool_of_an_all_padding_row_is_zero():
    states = torch.ones(2, 3, 4)
    pooled = mean_pool(states, torch.tensor([[1, 1, 0], [0, 0, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[1.0] * 4, [0.0] * 4]))


def test_retriever_pooling_is_saved_loaded_and_validated(tmp_path):
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config(retriever_pooling="mean")).eval()
    embedder.save_pretrained(tmp_path, model_card=False)
    assert json.loads((tmp_path / "config.json").read_text())["retriever_pooling"] == "mean"
    reloaded = RealmEmbedder.from_pretrained(tmp_path).eval()
    assert reloaded.config.retriever_pooling == "mean"
    input_ids, mask = ids_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids, attention_mask=mask).projected_score,
                                   embedder(input_ids=input_ids, attention_mask=mask).projected_score)
    assert RealmConfig().retriever_pooling == "cls"
    with pytest.raises(StrictDataclassError, match="retriever_pooling='max' is not supported; use 'cls'"):
        tiny_config(retriever_pooling="max")


def test_identity_projection_gives_the_pooled_vector_through_a_plain_layer_norm():
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config(retriever_pooling="mean", retriever_proj_size=32)).eval()
    init_projection_identity(embedder)
    input_ids, mask = ids_and_mask()
    with torch.no_grad():
        pooled = mean_pool(embedder.realm(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
        got = embedder(input_ids=input_ids, attention_mask=mask).projected_score
    torch.testing.assert_close(got, F.layer_norm(pooled, (32,), eps=embedder.config.layer_norm_eps))
    with pytest.raises(ValueError, match="retriever_proj_size == hidden_size, got 16 and 32"):
        init_projection_identity(RealmEmbedder(tiny_config()))


def test_principal_directions_are_orthonormal_and_span_the_top_components():
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, generator=generator))  # columns: orthonormal directions
    scales = torch.tensor([10.0, 6.0, 4.0] + [0.1] * 7)
    offset = torch.full((10,), 3.0)
    sample = (torch.randn(500, 10, generator=generator) * scales) @ basis.T + offset  # [500, 10]
    components, mean = principal_directions(sample, 3)
    torch.testing.assert_close(components @ components.T, torch.eye(3), atol=1e-5, rtol=0)
    top = basis[:, :3]
    torch.testing.assert_close(components.T @ components, top @ top.T, atol=0.02, rtol=0)
    torch.testing.assert_close(mean, offset, atol=1.0, rtol=0)
    _, uncentred = principal_directions(sample, 3, center=False)
    assert torch.equal(uncentred, torch.zeros(10))
    with pytest.raises(ValueError, match="need at least 3 embeddings"):
        principal_directions(sample[:2], 3)


def tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


def corpus(n: int = 40) -> dict:
    generator = torch.Generator().manual_seed(1)
    picks = torch.randint(len(WORDS), (n, 6), generator=generator).tolist()
    return {"title": [WORDS[row[0]] for row in picks], "text": [" ".join(WORDS[i] for i in row) for row in picks]}


def test_pca_projection_centres_and_decorrelates_the_sample():
    torch.manual_seed(0)
    retriever = RealmRetriever(tiny_config(retriever_pooling="mean", separate_query_embedder=True)).eval()
    share = init_projection_from_corpus(retriever, tokenizer(), corpus(), sample_size=30)
    dense = retriever.embedder.cls.dense
    torch.testing.assert_close(dense.weight @ dense.weight.T, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.equal(retriever.query_embedder.cls.dense.weight, dense.weight)
    assert torch.equal(retriever.embedder.cls.LayerNorm.weight, torch.ones(16))
    assert share.shape == (16,) and bool((share[:-1] >= share[1:]).all()) and 0 < share.sum() <= 1 + 1e-6
    with pytest.raises(ValueError, match="blocks is empty"):
        init_projection_from_corpus(retriever, tokenizer(), [])


def save_bert(path, with_head=False, pooling=None):
    """A tiny BERT checkpoint directory (BertModel, or BertForMaskedLM with its MLM head), optionally with a
    sentence-transformers `1_Pooling/config.json`."""
    fields = {k: v for k, v in TINY.items() if k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                     "num_attention_heads", "intermediate_size",
                                                     "max_position_embeddings")}
    torch.manual_seed(1)
    bert = (BertForMaskedLM if with_head else BertModel)(BertConfig(**fields))
    if with_head:
        with torch.no_grad():
            bert.cls.predictions.transform.dense.weight.normal_()
            bert.cls.predictions.bias.normal_()
    bert.save_pretrained(path)
    RealmTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(path)
    if pooling:
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps(
            {"pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean"}))
    return bert


def warnings_of(caplog):
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_sentence_encoder_is_mean_pooled_and_a_random_projection_warned(tmp_path, caplog):
    save_bert(tmp_path, pooling="mean")
    with caplog.at_level(logging.WARNING):
        retriever = init_from_bert(RealmRetriever, tmp_path, retriever_proj_size=16)
    assert retriever.config.retriever_pooling == "mean"
    assert "is a sentence encoder and the retriever's 16-d projection is random" in warnings_of(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        retriever = init_from_bert(RealmRetriever, tmp_path, projection="identity", retriever_pooling="cls")
    assert "was trained with mean pooling but the retriever pools with 'cls'" in warnings_of(caplog)
    assert torch.equal(retriever.embedder.cls.dense.weight, torch.eye(32))


def test_a_plain_bert_keeps_cls_pooling_without_warnings(tmp_path, caplog):
    save_bert(tmp_path)
    with caplog.at_level(logging.WARNING):
        retriever = init_from_bert(RealmRetriever, tmp_path, projection="pca", blocks=corpus(), retriever_proj_size=8)
    assert retriever.config.retriever_pooling == "cls" and warnings_of(caplog) == ""
    dense = retriever.embedder.cls.dense
    torch.testing.assert_close(dense.weight @ dense.weight.T, torch.eye(8), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="projection='pca' needs blocks="):
        init_from_bert(RealmRetriever, tmp_path, projection="pca")
    with pytest.raises(ValueError, match="projection='learned' is not one of"):
        init_from_bert(RealmRetriever, tmp_path, projection="learned")
    with pytest.raises(ValueError, match="RealmKnowledgeAugEncoder does not have; leave projection at 'random'"):
        init_from_bert(RealmKnowledgeAugEncoder, tmp_path, projection="identity")
    full_width = init_from_bert(RealmRetriever, tmp_path, projection="identity")
    assert full_width.config.retriever_proj_size == 32


def test_an_encoder_from_a_bert_without_mlm_head_gets_one_from_its_word_embeddings(tmp_path, caplog):
    save_bert(tmp_path)
    with caplog.at_level(logging.WARNING):
        encoder = init_from_bert(RealmKnowledgeAugEncoder, tmp_path)
    head = encoder.cls.predictions
    assert "has no MLM head (cls.predictions)" in warnings_of(caplog)
    assert torch.equal(head.decoder.weight, encoder.realm.embeddings.word_embeddings.weight)
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    assert torch.equal(head.transform.dense.weight, torch.eye(32))
    assert torch.equal(head.transform.LayerNorm.weight, torch.full((32,), HEAD_START_SCALE))
    input_ids, mask = ids_and_mask()
    with torch.no_grad():
        logits = encoder(input_ids=input_ids, attention_mask=mask).logits  # [2, 6, vocab]
    assert logits.abs().max() < 2.0  # near-uniform first predictions


def test_an_encoder_from_a_bert_with_mlm_head_keeps_it(tmp_path, caplog):
    bert = save_bert(tmp_path, with_head=True)
    with caplog.at_level(logging.WARNING):
        encoder = init_from_bert(RealmKnowledgeAugEncoder, tmp_path)
    assert "MLM head" not in warnings_of(caplog)
    for name, value in bert.cls.state_dict().items():
        torch.testing.assert_close(encoder.cls.state_dict()[name], value, msg=name)


def test_mean_pooled_retrievers_freeze_their_unused_poolers():
    torch.manual_seed(0)
    for pooling, separate, frozen_poolers in (("cls", True, 0), ("mean", False, 2), ("mean", True, 4)):
        retriever = RealmRetriever(tiny_config(retriever_pooling=pooling, separate_query_embedder=separate))
        model = RealmPretrainingModel(retriever,
                                      RealmKnowledgeAugEncoder(tiny_config()))
        frozen = freeze_unused_parameters(model)
        assert sum(n.startswith("retriever.") and ".realm.pooler." in n for n in frozen) == frozen_poolers, pooling


def test_the_score_scale_sets_how_sharp_scores_start_without_changing_rankings(tmp_path):
    save_bert(tmp_path, pooling="mean")
    scaled = init_from_bert(RealmRetriever, tmp_path, projection="identity").eval()  # default: 20 x a cosine
    plain = init_from_bert(RealmRetriever, tmp_path, projection="identity", score_scale=None).eval()
    assert torch.equal(plain.embedder.cls.LayerNorm.weight, torch.ones(32))
    input_ids, mask = ids_and_mask()
    with torch.no_grad():
        sharp, flat = scaled.embed_queries(input_ids, mask), plain.embed_queries(input_ids, mask)  # [2, 32]
    torch.testing.assert_close(sharp.norm(dim=-1), torch.full((2,), DEFAULT_SCORE_SCALE ** 0.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(flat.norm(dim=-1), torch.full((2,), 32 ** 0.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(sharp @ sharp.T, (flat @ flat.T) * DEFAULT_SCORE_SCALE / 32, rtol=1e-4, atol=1e-4)
    set_score_scale(plain, 2.0)
    assert torch.allclose(plain.query_embedder.cls.LayerNorm.weight, torch.full((32,), (2.0 / 32) ** 0.5))
    with pytest.raises(ValueError, match="score scale must be > 0"):
        set_score_scale(plain, 0.0)


def test_load_retriever_keeps_a_sentence_encoders_space_and_gives_other_berts_realms_projection(tmp_path, caplog):
    save_bert(tmp_path / "sentence", pooling="mean")
    save_bert(tmp_path / "plain")
    with caplog.at_level(logging.WARNING):
        sentence = load_retriever(str(tmp_path / "sentence"))
    assert warnings_of(caplog) == ""
    assert sentence.config.retriever_pooling == "mean" and sentence.config.retriever_proj_size == 32
    assert torch.equal(sentence.embedder.cls.dense.weight, torch.eye(32))
    with caplog.at_level(logging.WARNING):
        plain = load_retriever(str(tmp_path / "plain"), seed=3)
    assert "projection is freshly initialised (seed 3)" in warnings_of(caplog)
    assert plain.config.retriever_pooling == "cls" and plain.config.retriever_proj_size == 128
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    again = load_retriever(str(tmp_path / "plain"), seed=3)
    assert torch.equal(again.embedder.cls.dense.weight, plain.embedder.cls.dense.weight)  # seeded
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is left as it was
    chosen = load_retriever(str(tmp_path / "sentence"), projection="random")
    assert chosen.config.retriever_proj_size == 128
    with pytest.raises(ValueError, match="needs a corpus sample: use init_from_bert with blocks="):
        load_retriever(str(tmp_path / "sentence"), projection="pca")
