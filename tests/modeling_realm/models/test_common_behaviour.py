"""transformers 5's common model expectations, applied to the REALM classes on tiny configs (issue 15, item 1):
attention and hidden-state outputs, attention masks, batching equivalence, inputs_embeds, embeddings accessors,
resize_token_embeddings and tied weights, each through a save/load round trip where it matters."""

import pytest
import torch

from modeling_realm import (
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmRetriever,
    RealmScorer,
)
from tests.helpers import assert_close, perturb_, tiny_config

BATCH, SEQ, LAYERS, HEADS, HIDDEN, VOCAB = 3, 7, 2, 4, 32, 106
ALL_CLASSES = [RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader, RealmRetriever, RealmForOpenQA]


def ids(*shape):
    return torch.randint(5, VOCAB, shape)


def eager(model_class, **overrides):
    """A perturbed model in eval mode with eager attention (the one that returns attention weights)."""
    model = model_class._from_config(tiny_config(**overrides), attn_implementation="eager")
    return perturb_(model).eval()


def main_output(model, input_ids, attention_mask=None, **kwargs):
    """The tensor each class returns per input row: projections of the embedder, logits of the encoder."""
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out.projected_score if isinstance(model, RealmEmbedder) else out.logits


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmKnowledgeAugEncoder])
@pytest.mark.parametrize("through", ["argument", "config"])
def test_attentions_and_hidden_states_have_one_entry_per_layer(model_class, through):
    flags = dict(output_attentions=True, output_hidden_states=True)
    model = eager(model_class, **(flags if through == "config" else {}))
    with torch.no_grad():
        out = model(input_ids=ids(BATCH, SEQ), **(flags if through == "argument" else {}))
    assert len(out.attentions) == LAYERS and len(out.hidden_states) == LAYERS + 1
    assert all(a.shape == (BATCH, HEADS, SEQ, SEQ) for a in out.attentions)
    assert all(h.shape == (BATCH, SEQ, HIDDEN) for h in out.hidden_states)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(BATCH, HEADS, SEQ))  # rows are distributions
    with torch.no_grad():
        plain = model(input_ids=ids(BATCH, SEQ), output_attentions=False, output_hidden_states=False)
    assert plain.attentions is None and plain.hidden_states is None


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmKnowledgeAugEncoder])
def test_padding_behind_an_attention_mask_changes_nothing(model_class):
    model = eager(model_class)
    short = ids(1, 5)
    padded = torch.cat([short, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    expected = main_output(model, short)
    got = main_output(model, padded, mask)
    unmasked = main_output(model, padded)
    if model_class is RealmKnowledgeAugEncoder:
        got, unmasked = got[:, :5], unmasked[:, :5]
    assert_close(got, expected, atol=1e-5, what="masked padding")
    assert (unmasked - expected).abs().max() > 1e-3  # the mask is what makes padding harmless
    weights = model(input_ids=padded, attention_mask=mask, output_attentions=True).attentions[0]
    assert weights[..., 5:].abs().max() < 1e-6  # no attention on padded keys


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmRetriever,
                                         RealmForOpenQA])  # RealmReader's rows are one question's blocks
def test_rows_of_a_batch_equal_rows_alone(model_class):
    model = eager(model_class)
    if model_class is RealmForOpenQA:
        model.block_emb.normal_()
    inputs = batch_inputs(model_class)
    with torch.no_grad():
        together = model(**inputs)
        for row in range(inputs["input_ids"].shape[0]):
            alone = model(**{k: v[row:row + 1] if k in PER_ROW else v for k, v in inputs.items()})
            for name in OUTPUTS[model_class]:
                assert_close(alone[name][0], together[name][row], atol=1e-5, what=f"{name} row {row}")


PER_ROW = {"input_ids", "attention_mask", "candidate_input_ids", "block_ids", "reader_input_ids", "block_mask"}
OUTPUTS = {RealmEmbedder: ["projected_score"], RealmScorer: ["relevance_score", "candidate_score"],
           RealmKnowledgeAugEncoder: ["logits"], RealmRetriever: ["relevance_score"],
           RealmForOpenQA: ["relevance_score", "reader_logits"]}


def batch_inputs(model_class):
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    attention_mask[1, 4:] = 0
    common = dict(input_ids=ids(BATCH, SEQ), attention_mask=attention_mask)
    if model_class is RealmScorer:
        return dict(**common, candidate_input_ids=ids(BATCH, 2, SEQ))
    if model_class is RealmRetriever:
        return dict(**common, block_input_ids=ids(4, SEQ))
    if model_class is RealmForOpenQA:
        return dict(**common, block_ids=torch.randint(0, 6, (BATCH, 3)), reader_input_ids=ids(BATCH, 2, SEQ),
                    block_mask=torch.ones(BATCH, 2, SEQ, dtype=torch.bool))
    return common


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmKnowledgeAugEncoder])
def test_inputs_embeds_equal_input_ids(model_class):
    model = eager(model_class)
    input_ids = ids(BATCH, SEQ)
    embeds = model.get_input_embeddings()(input_ids)
    with torch.no_grad():
        from_embeds = model(inputs_embeds=embeds)
    expected = main_output(model, input_ids)
    got = from_embeds.projected_score if model_class is RealmEmbedder else from_embeds.logits
    assert_close(got, expected, atol=1e-6, what="inputs_embeds")


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_input_embeddings_can_be_replaced(model_class):
    model = eager(model_class)
    replacement = torch.nn.Embedding(VOCAB, HIDDEN)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement


@pytest.mark.parametrize("model_class", ALL_CLASSES)
@pytest.mark.parametrize("size", [120, 100])
def test_resized_vocabulary_keeps_rows_and_reloads(model_class, size, tmp_path):
    model = eager(model_class)
    before = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(size)
    assert model.config.vocab_size == size
    after = model.get_input_embeddings().weight
    assert after.shape == (size, HIDDEN)
    kept = min(size, VOCAB)
    assert torch.equal(after[:kept], before[:kept])
    sizes = {name: param.shape[0] for name, param in model.state_dict().items()
             if "word_embeddings" in name or "predictions.bias" in name or "predictions.decoder" in name}
    assert sizes and set(sizes.values()) == {size}, sizes  # every vocabulary-sized tensor follows
    model.save_pretrained(tmp_path, model_card=False)
    reloaded = model_class.from_pretrained(tmp_path)
    assert reloaded.config.vocab_size == size
    assert torch.equal(reloaded.get_input_embeddings().weight, after)


def test_encoder_logits_follow_a_resized_vocabulary():
    model = eager(RealmKnowledgeAugEncoder)
    model.resize_token_embeddings(120)
    assert main_output(model, ids(2, SEQ)).shape == (2, SEQ, 120)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_encoder_decoder_is_tied_to_word_embeddings_through_save_and_load(tmp_path):
    model = eager(RealmKnowledgeAugEncoder)
    assert model.cls.predictions.decoder.weight is model.realm.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path, model_card=False)
    reloaded = RealmKnowledgeAugEncoder.from_pretrained(tmp_path)
    decoder = reloaded.cls.predictions.decoder
    assert decoder.weight is reloaded.realm.embeddings.word_embeddings.weight
    assert decoder.bias is reloaded.cls.predictions.bias
    with torch.no_grad():
        reloaded.get_input_embeddings().weight[7] += 1.0
    assert torch.equal(decoder.weight[7], reloaded.get_input_embeddings().weight[7])


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmReader])
def test_unused_mlm_heads_are_not_tied_to_word_embeddings(model_class):
    """As in 4.x: the embedder's and reader's MLM heads are stored separately (google's files hold both)."""
    model = eager(model_class)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight


def test_eval_outputs_are_deterministic_and_training_uses_dropout():
    model = eager(RealmKnowledgeAugEncoder, hidden_dropout_prob=0.3)
    input_ids = ids(2, SEQ)
    assert torch.equal(main_output(model, input_ids), main_output(model, input_ids))
    model.train()
    assert not torch.equal(main_output(model, input_ids), main_output(model, input_ids))


def test_config_common_round_trips_and_label_counts(tmp_path):
    from modeling_realm import RealmConfig

    config = RealmConfig(**{**tiny_config().to_dict(), "num_labels": 5, "output_hidden_states": True,
                            "return_dict": False, "id2label": None, "label2id": None})
    assert len(config.id2label) == 5
    config.num_labels = 3
    assert len(config.id2label) == 3 and len(config.label2id) == 3
    text = config.to_json_string()
    assert '"retriever_proj_size": 16' in text and '"model_type": "realm"' in text
    config.to_json_file(tmp_path / "config.json")
    assert RealmConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "repo" / "sub")
    again = RealmConfig.from_pretrained(tmp_path / "repo", subfolder="sub")
    assert again.to_dict() == config.to_dict()
    assert again.output_hidden_states is True and again.return_dict is False and again.num_labels == 3


def test_encoder_and_openqa_train_as_4x_tested_them():
    """4.x's training test: the encoder's loss over candidates backpropagates; RealmForOpenQA's loss does too, again
    after block_embedding_to moves block_emb to the CPU."""
    encoder = RealmKnowledgeAugEncoder(tiny_config()).train()
    out = encoder(input_ids=ids(BATCH, 2, SEQ), relevance_score=torch.randn(BATCH, 2), labels=ids(BATCH, SEQ))
    out.loss.backward()
    assert encoder.realm.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    model = RealmForOpenQA(tiny_config()).train()
    model.block_emb.normal_()
    block_mask = torch.zeros(1, 2, 10, dtype=torch.bool)
    block_mask[..., 4:9] = True
    inputs = dict(input_ids=ids(1, SEQ), block_ids=torch.tensor([[0, 3, 5]]), reader_input_ids=ids(1, 2, 10),
                  block_mask=block_mask, has_answers=torch.tensor([[False, True, False]]),
                  start_positions=torch.tensor([[[-1], [5]]]), end_positions=torch.tensor([[[-1], [6]]]))
    first = model(**inputs).loss
    first.backward()
    model.zero_grad()
    assert model.block_embedding_to("cpu") is model and model.block_emb.device.type == "cpu"
    again = model(**inputs).loss
    again.backward()
    assert torch.isfinite(again) and torch.equal(again, first)
    assert model.reader.qa_outputs.dense_output.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmKnowledgeAugEncoder])
def test_sdpa_attention_and_feed_forward_chunks_give_the_eager_outputs(model_class):
    model = eager(model_class)
    input_ids, mask = ids(BATCH, SEQ), torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, 3:] = 0
    expected = main_output(model, input_ids, mask)
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    assert_close(main_output(model, input_ids, mask), expected, atol=1e-5, what="sdpa")
    chunked = model_class._from_config(tiny_config(chunk_size_feed_forward=1), attn_implementation="eager").eval()
    chunked.load_state_dict(model.state_dict())
    assert_close(main_output(chunked, input_ids, mask), expected, atol=1e-5, what="chunked feed-forward")
