"""Tiny-config model tests: shapes, gradients, the retriever's index attachment and errors on bad input."""

import numpy as np
import pytest
import torch

from modeling_realm import (
    RealmEmbedder,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmRetriever,
    RealmScorer,
)
from tests.helpers import perturb_, tiny_config

BATCH, SEQ = 3, 7


def ids(*shape, vocab=106):
    return torch.randint(5, vocab, shape)


def test_embedder_shapes_and_outputs():
    model = RealmEmbedder(tiny_config()).eval()
    out = model(input_ids=ids(BATCH, SEQ), output_hidden_states=True)
    assert out.projected_score.shape == (BATCH, 16)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (BATCH, SEQ, 32)
    embeds = model.get_input_embeddings()(ids(BATCH, SEQ))
    assert model(inputs_embeds=embeds).projected_score.shape == (BATCH, 16)


def test_scorer_accepts_any_number_of_candidates_when_3d():
    model = RealmScorer(tiny_config()).eval()
    out = model(input_ids=ids(BATCH, SEQ), candidate_input_ids=ids(BATCH, 5, SEQ))
    assert out.relevance_score.shape == (BATCH, 5)
    assert out.candidate_score.shape == (BATCH, 5, 16)
    torch.testing.assert_close(out.relevance_score, torch.einsum("bd,bnd->bn", out.query_score, out.candidate_score))


def test_scorer_flattened_candidates_use_config_num_candidates():
    model = RealmScorer(tiny_config()).eval()
    out = model(input_ids=ids(BATCH, SEQ), candidate_input_ids=ids(BATCH * 2, SEQ))
    assert out.relevance_score.shape == (BATCH, 2)
    with pytest.raises(ValueError, match="flattened candidates for 3 queries, but config.num_candidates=2"):
        model(input_ids=ids(BATCH, SEQ), candidate_input_ids=ids(BATCH * 2 + 1, SEQ))
    with pytest.raises(ValueError, match="2 rows of candidates for 3 queries"):
        model(input_ids=ids(BATCH, SEQ), candidate_input_ids=ids(2, 2, SEQ))


def test_encoder_logits_shape_and_loss_matches_hand_computation():
    config = tiny_config()
    model = perturb_(RealmKnowledgeAugEncoder(config)).eval()
    input_ids, relevance = ids(2, 2, SEQ), torch.randn(2, 2)
    labels = torch.full((2, SEQ), -100)
    labels[:, 2], labels[1, 4] = 9, 11
    out = model(input_ids=input_ids, relevance_score=relevance, labels=labels, mlm_mask=labels != -100)
    assert out.logits.shape == (4, SEQ, 106)
    # log sum_z p(z|x) p(y|z,x) by hand, averaged over the three targets.
    log_p_tokens = out.logits.log_softmax(-1).view(2, 2, SEQ, 106)
    log_p_blocks = relevance.log_softmax(-1)
    terms = []
    for b, position in [(0, 2), (1, 2), (1, 4)]:
        target = labels[b, position]
        terms.append(torch.logsumexp(log_p_blocks[b] + log_p_tokens[b, :, position, target], dim=0))
    torch.testing.assert_close(out.loss, -torch.stack(terms).mean())


def test_encoder_without_relevance_treats_candidates_as_equally_relevant():
    """A difference from 4.x (which needed relevance_score for a loss): transformers' common training inputs, flat
    ids with labels of the same rows, give the plain masked-LM loss; 3-d inputs a uniform marginal."""
    model = perturb_(RealmKnowledgeAugEncoder(tiny_config())).eval()
    input_ids, labels = ids(2, 2, SEQ), ids(2, SEQ)
    uniform = model(input_ids=input_ids, relevance_score=torch.zeros(2, 2), labels=labels).loss
    torch.testing.assert_close(model(input_ids=input_ids, labels=labels).loss, uniform)
    flat = model(input_ids=input_ids[:, 0], labels=labels)
    plain = torch.nn.functional.cross_entropy(flat.logits.reshape(-1, 106), labels.reshape(-1))
    torch.testing.assert_close(flat.loss, plain)
    torch.testing.assert_close(model(input_ids=input_ids.view(4, SEQ), labels=labels).loss, uniform)


def test_reader_enumerates_spans_inside_the_block_only():
    config = tiny_config()
    model = perturb_(RealmReader(config)).eval()
    block_mask = torch.zeros(2, 10, dtype=torch.bool)
    block_mask[:, 5:9] = True
    out = model(input_ids=ids(2, 10), token_type_ids=block_mask.long(), relevance_score=torch.zeros(2),
                block_mask=block_mask)
    assert 5 <= out.start_pos.item() <= out.end_pos.item() <= 8
    assert out.end_pos.item() - out.start_pos.item() < config.max_span_width


@pytest.mark.parametrize("separate", [False, True])
def test_retriever_gradients_reach_both_towers(separate):
    model = RealmRetriever(tiny_config(separate_query_embedder=separate)).train()
    out = model(input_ids=ids(BATCH, SEQ), block_input_ids=ids(4, SEQ), labels=torch.tensor([0, 1, 2]))
    assert out.relevance_score.shape == (BATCH, 4)
    out.loss.backward()
    block_grad = model.embedder.realm.encoder.layer[0].attention.self.query.weight.grad
    query_grad = model.query_embedder.realm.encoder.layer[0].attention.self.query.weight.grad
    assert block_grad is not None and block_grad.abs().sum() > 0
    assert query_grad is not None and query_grad.abs().sum() > 0
    assert (model.query_embedder is model.embedder) is (not separate)


def test_retriever_scores_equal_separate_embedding_calls():
    model = RealmRetriever(tiny_config()).eval()
    queries, blocks = ids(BATCH, SEQ), ids(BATCH, 2, SEQ)
    out = model(input_ids=queries, block_input_ids=blocks)
    query = model.embed_queries(queries)
    per_block = model.embed_blocks(blocks.view(-1, SEQ)).view(BATCH, 2, -1)
    torch.testing.assert_close(out.relevance_score, torch.einsum("bd,bnd->bn", query, per_block))


class ExactIndex:
    """A hand-built index: brute-force inner product over known embeddings."""

    def __init__(self, embeddings):
        self.embeddings = embeddings
        self.dimension = embeddings.shape[1]

    def search(self, queries, k):
        scores = queries @ self.embeddings.T
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), order


def test_retriever_searches_an_attached_index():
    model = RealmRetriever(tiny_config()).eval()
    blocks = ids(6, SEQ)
    with torch.no_grad():
        block_embeddings = model.embed_blocks(blocks).numpy()
    model.index = ExactIndex(block_embeddings)
    found = model.retrieve(blocks[[4, 1]], k=3)
    assert found.block_ids.shape == (2, 3) and found.scores.shape == (2, 3)
    assert found.block_ids[:, 0].tolist() == [4, 1]  # a block is its own nearest neighbour
    assert np.all(np.diff(found.scores, axis=1) <= 0)
    assert found.blocks is None  # this hand-built index has no texts


def test_retriever_index_errors():
    model = RealmRetriever(tiny_config())
    with pytest.raises(ValueError, match="No index is attached"):
        model.retrieve(ids(1, SEQ))
    with pytest.raises(ValueError, match="index holds 8-d embeddings but this model produces 16-d"):
        model.index = ExactIndex(np.zeros((3, 8), dtype=np.float32))
    index = ExactIndex(np.zeros((3, 16), dtype=np.float32))
    assert RealmRetriever(tiny_config(), index=index).index is index
    assert "_index" not in RealmRetriever(tiny_config(), index=index).state_dict()


@pytest.mark.parametrize("bad_ids, message", [
    (torch.zeros(SEQ, dtype=torch.long), r"RealmEmbedder input_ids must have shape \[batch, seq\]"),
    (torch.zeros(2, 2, SEQ, dtype=torch.long), r"got a tensor of shape \(2, 2, 7\)"),
])
def test_embedder_rejects_wrong_rank(bad_ids, message):
    with pytest.raises(ValueError, match=message):
        RealmEmbedder(tiny_config())(input_ids=bad_ids)


def test_head_mask_is_refused_with_explanation():
    with pytest.raises(ValueError, match="head_mask is not supported"):
        RealmEmbedder(tiny_config())(input_ids=ids(1, SEQ), head_mask=torch.ones(4))


def test_reader_rejects_short_sequences_and_missing_inputs():
    model = RealmReader(tiny_config())
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="fewer than config.max_span_width=3"):
        model(input_ids=ids(2, 2), relevance_score=torch.zeros(2), block_mask=mask)
    with pytest.raises(ValueError, match="needs relevance_score"):
        model(input_ids=ids(2, 5), block_mask=mask)
    with pytest.raises(ValueError, match="needs block_mask"):
        model(input_ids=ids(2, 5), relevance_score=torch.zeros(2))
    with pytest.raises(ValueError, match="got 2 reader inputs but relevance_score has 1"):
        model(input_ids=ids(2, 5), relevance_score=torch.zeros(1), block_mask=torch.ones(2, 5, dtype=torch.bool))


def test_encoder_rejects_mismatched_candidates():
    model = RealmKnowledgeAugEncoder(tiny_config())
    labels = ids(2, SEQ)
    with pytest.raises(ValueError, match="labels has 3 rows for 4 joint sequences"):
        model(input_ids=ids(4, SEQ), labels=ids(3, SEQ))
    with pytest.raises(ValueError, match="relevance_score has 3 candidates for 2 queries, but the encoder got 4"):
        model(input_ids=ids(2, 2, SEQ), relevance_score=torch.zeros(2, 3), labels=labels)


def test_scorer_requires_both_sides():
    model = RealmScorer(tiny_config())
    with pytest.raises(ValueError, match="needs input_ids or inputs_embeds"):
        model(candidate_input_ids=ids(1, 2, SEQ))
    with pytest.raises(ValueError, match="needs candidate_input_ids"):
        model(input_ids=ids(1, SEQ))
