"""Gradient checkpointing through transformers' common training path, for every class that claims it (issue 15,
item 6): `gradient_checkpointing_enable()`, `train()`, a forward on the inputs a model test prepares, a loss,
`backward()`; the gradients equal those of the same step without checkpointing, parameter by parameter.

Classes with a loss of their own (encoder, reader, retriever, open-QA model) are given the labels a common test
prepares for them; the embedder and the scorer have no loss (base and container models, which transformers'
common training tests skip) and are checked with a loss made from their outputs.
"""

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling_realm import (
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmRetriever,
    RealmScorer,
)
from tests.helpers import tiny_config

BATCH, SEQ, READ_SEQ = 3, 7, 10


def ids(*shape):
    return torch.randint(5, 106, shape)


def mask(*shape):
    attention = torch.randint(0, 2, shape)
    attention[..., 0] = 1  # every row attends to something
    return attention


def common(batch=BATCH, seq=SEQ):
    """What `prepare_config_and_inputs_for_common` gives: ids, token types and an attention mask."""
    return dict(input_ids=ids(batch, seq), token_type_ids=torch.randint(0, 2, (batch, seq)),
                attention_mask=mask(batch, seq))


def reader_labels(*rows):
    """Gold annotations for rows of `READ_SEQ`-token reader inputs whose block is tokens 4..READ_SEQ-2."""
    block_mask = torch.zeros(*rows, READ_SEQ, dtype=torch.bool)
    block_mask[..., 4:READ_SEQ - 1] = True
    starts = torch.full((*rows, 1), -1)
    starts[..., 0, 0] = 5
    return dict(block_mask=block_mask, start_positions=starts, end_positions=starts.clamp(min=-1) + (starts >= 0) * 1)


def inputs_for(model_class):
    """The inputs and labels a model test prepares for `model_class` (`return_labels=True`)."""
    if model_class is RealmEmbedder:
        return common()
    if model_class is RealmScorer:
        return dict(**common(), candidate_input_ids=ids(BATCH, 2, SEQ), candidate_attention_mask=mask(BATCH, 2, SEQ))
    if model_class is RealmRetriever:
        return dict(**common(), block_input_ids=ids(4, SEQ), block_attention_mask=mask(4, SEQ),
                    labels=torch.tensor([0, 2, 3]))
    if model_class is RealmKnowledgeAugEncoder:
        return dict(**common(), labels=ids(BATCH, SEQ))
    if model_class is RealmReader:
        reader = common(2, READ_SEQ)
        return dict(**reader, relevance_score=torch.randn(2), has_answers=torch.tensor([True, False]),
                    **reader_labels(2))
    reader = {f"reader_{k}": v.view(2, 2, READ_SEQ) for k, v in common(4, READ_SEQ).items()}
    return dict(**common(2), block_embeddings=torch.randn(2, 3, 16), **reader,
                has_answers=torch.tensor([[True, False, True], [False, True, False]]), **reader_labels(2, 2))


def loss_of(output):
    if getattr(output, "loss", None) is not None:
        return output.loss
    scores = output.projected_score if hasattr(output, "projected_score") else output.relevance_score
    return scores.square().sum()  # no loss of its own: a base / container model


def gradients(model, inputs, checkpointing, seed=7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in both runs
    loss_of(model(**inputs)).backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


@pytest.mark.parametrize("use_reentrant", [None, True])  # None: transformers 5 default, use_reentrant=False
@pytest.mark.parametrize("model_class", [RealmEmbedder, RealmScorer, RealmRetriever, RealmKnowledgeAugEncoder,
                                         RealmReader, RealmForOpenQA])
def test_checkpointed_gradients_equal_plain_ones(model_class, use_reentrant):
    assert model_class.supports_gradient_checkpointing
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # deterministic given the seed
    model = model_class(config).train()
    inputs = inputs_for(model_class)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    calls = []
    # a module inside the layer: it runs again when backward recomputes a checkpointed layer
    next(layers[0].children()).register_forward_hook(lambda *_: calls.append(1))
    expected = gradients(model, inputs, checkpointing=False)
    plain_calls = len(calls)
    kwargs = None if use_reentrant is None else {"use_reentrant": use_reentrant}
    with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):  # transformers 5's new name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    assert all(layer.gradient_checkpointing for layer in layers)
    calls.clear()
    got = gradients(model, inputs, checkpointing=True)
    assert plain_calls >= 1 and len(calls) == 2 * plain_calls  # each layer call recomputed once in backward
    assert got.keys() == expected.keys() and len(got) > 10
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert any(grad.abs().sum() > 0 for grad in got.values())
