"""The marginal losses and span bookkeeping against hand-computed values."""

import math

import torch

from modeling_realm.models.losses import marginal_log_loss, marginal_mlm_loss
from modeling_realm.models.spans import enumerate_spans, gold_span_mask


def test_marginal_log_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    correct = torch.tensor([[True, False, True], [False, True, False]])
    expected_first = -math.log((math.e ** 1 + math.e ** 0.5) / (math.e ** 1 + math.e ** 2 + math.e ** 0.5))
    loss = marginal_log_loss(logits, correct)
    torch.testing.assert_close(loss, torch.tensor([expected_first, math.log(3.0)]))


def test_marginal_log_loss_is_finite_without_any_correct_entry():
    loss = marginal_log_loss(torch.tensor([0.3, -1.0]), torch.tensor([False, False]))
    assert torch.isfinite(loss) and loss > 1e30
    assert (loss * 0.0) == 0.0


def test_enumerate_spans_order_and_mask():
    mask = torch.tensor([[False, True, True, True, False]])
    starts, ends, span_mask = enumerate_spans(mask, max_span_width=2)
    assert starts.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert ends.tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 4]
    assert span_mask.tolist() == [[False, True, True, True, False, False, True, True, False]]


def test_gold_span_mask_ignores_padding():
    starts, ends = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 2, 1, 2])
    gold_starts, gold_ends = torch.tensor([[1, -1], [0, 2]]), torch.tensor([[2, -1], [0, 2]])
    assert gold_span_mask(starts, ends, gold_starts, gold_ends).tolist() == [
        [False, False, False, False, True], [True, False, True, False, False]]


def test_marginal_mlm_loss_by_hand():
    # one query, two blocks, sequence of 2, vocabulary of 3; only position 1 is a target (token 2)
    scores = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]],
                            [[0.0, 0.0, 0.0], [0.0, 0.0, math.log(6.0)]]]])
    labels = torch.tensor([[-100, 2]])
    relevance = torch.tensor([[0.0, math.log(3.0)]])
    p_block = torch.tensor([0.25, 0.75])
    p_token = torch.tensor([2.0 / 4.0, 6.0 / 8.0])
    expected = -math.log(float((p_block * p_token).sum()))
    weighted = marginal_mlm_loss(scores, labels, relevance, mlm_mask=labels != -100)
    torch.testing.assert_close(weighted, torch.tensor(expected))
    # 4.x's default weights every position, and an ignored label contributes log 1 = 0.
    torch.testing.assert_close(marginal_mlm_loss(scores, labels, relevance), torch.tensor(expected / 2))


def test_gathered_marginal_loss_equals_the_full_one():
    """Pretraining's loss over the weighted positions only equals marginal_mlm_loss over every position, weights
    that cover unlabelled positions (which count in the denominator) included."""
    from modeling_realm.models.losses import gathered_marginal_loss, masked_token_log_prob

    torch.manual_seed(0)
    batch, k, seq, vocab = 3, 4, 7, 11
    scores, relevance = torch.randn(batch, k, seq, vocab), torch.randn(batch, k)
    labels = torch.full((batch, seq), -100)
    labels[0, 2], labels[1, 5], labels[2, 0], labels[2, 6] = 3, 7, 1, 10
    for weights in (labels != -100, (labels != -100) | (torch.arange(seq) == 4)):
        rows, positions = weights.nonzero(as_tuple=True)
        # [masked, k, vocab]
        gathered = scores[rows, :, positions]
        loss = gathered_marginal_loss(masked_token_log_prob(gathered, labels[rows, positions]),
                                      relevance.log_softmax(-1)[rows], weights[rows, positions].float())
        torch.testing.assert_close(loss, marginal_mlm_loss(scores, labels, relevance, mlm_mask=weights))
