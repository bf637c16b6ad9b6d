"""REALM's marginal log-likelihood losses and span bookkeeping, as pure tensor functions.

All functions accept any number of leading batch dimensions, so the same code serves the 4.x-compatible
`RealmReader` (one question) and the batched `RealmForOpenQA`.
"""

import torch
from torch.nn import functional as F


def mask_to_score(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """0 where `mask` is true, the most negative finite value of `dtype` elsewhere."""
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


def marginal_log_loss(logits: torch.Tensor, is_correct: torch.Tensor) -> torch.Tensor:
    """-log of the probability mass that `softmax(logits)` puts on the correct entries.

    logits, is_correct: `[..., n]` -> loss `[...]`.  When no entry is correct the result is a huge finite
    number; callers multiply it by "any correct" (as REALM does) to zero it.
    """
    # [...]
    log_numerator = torch.logsumexp(logits + mask_to_score(is_correct, dtype=logits.dtype), dim=-1)
    # [...]
    log_denominator = torch.logsumexp(logits, dim=-1)
    return log_denominator - log_numerator


def span_candidates(block_mask: torch.Tensor, max_span_width: int):
    """Enumerate spans of width 1..max_span_width, widths in increasing order, starts left to right.

    block_mask: `[..., seq]` bool, true on evidence-block tokens.
    Returns starts `[num_spans]`, ends `[num_spans]` (inclusive) and span_mask `[..., num_spans]`, true where both
    ends of the span lie in the block.
    """
    seq_len = block_mask.shape[-1]
    device = block_mask.device
    starts = torch.cat([torch.arange(seq_len - width + 1, device=device) for width in range(1, max_span_width + 1)])
    ends = torch.cat([torch.arange(width - 1, seq_len, device=device) for width in range(1, max_span_width + 1)])
    # [..., num_spans]
    span_mask = block_mask.index_select(-1, starts) & block_mask.index_select(-1, ends)
    return starts, ends, span_mask


def gold_span_mask(starts, ends, gold_starts, gold_ends) -> torch.Tensor:
    """Which enumerated spans equal a gold span.

    starts, ends: `[num_spans]`; gold_starts, gold_ends: `[..., num_answers]` (-1 pads) -> `[..., num_spans]` bool.
    """
    # [..., num_answers, num_spans]
    is_start = gold_starts.unsqueeze(-1) == starts
    is_end = gold_ends.unsqueeze(-1) == ends
    # [..., num_spans]
    return (is_start & is_end).any(dim=-2)


def marginal_mlm_loss(prediction_scores, labels, relevance_score, mlm_mask=None) -> torch.Tensor:
    """REALM's masked-LM loss marginalised over retrieved blocks (transformers 4.x semantics).

    prediction_scores: `[batch, k, seq, vocab]`; labels: `[batch, seq]` (-100 = not a target);
    relevance_score: `[batch, k]`; mlm_mask: `[batch, seq]` weights of the positions averaged over.

    loss = -sum_pos mlm_mask * log sum_z p(z|x) p(y_pos|z,x) / sum_pos mlm_mask.  As in 4.x, an unmasked
    position whose label is -100 contributes log 1 = 0 but still counts in the denominator; pass
    `mlm_mask = labels != -100` for a plain average over the targets.
    """
    batch, k, seq_len, vocab = prediction_scores.shape
    weights = torch.ones_like(labels, dtype=torch.float32) if mlm_mask is None else mlm_mask.to(torch.float32)
    # [batch * k * seq]
    targets = labels.unsqueeze(1).expand(batch, k, seq_len).reshape(-1)
    # [batch, k, seq]
    token_log_prob = -F.cross_entropy(prediction_scores.reshape(-1, vocab), targets, reduction="none").view(
        batch, k, seq_len)
    # [batch * seq, k]: every position, as gathered_marginal_loss takes them
    token_log_prob = token_log_prob.transpose(1, 2).reshape(-1, k)
    block_log_prob = relevance_score.log_softmax(-1).repeat_interleave(seq_len, dim=0)
    return gathered_marginal_loss(token_log_prob, block_log_prob, weights.reshape(-1))


def gathered_marginal_loss(token_log_prob: torch.Tensor, block_log_prob: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """`losses.marginal_mlm_loss` over the weighted positions only: token and block log-probabilities `[masked, k]`,
    weights `[masked]`; -sum_pos w * log sum_z p(z|x) p(y_pos|z, x) / sum_pos w (0 when nothing is masked)."""
    # [masked]
    marginal_log_prob = (block_log_prob + token_log_prob).logsumexp(1)
    return -torch.nansum(torch.sum(marginal_log_prob * weights) / torch.sum(weights))
