"""Every loss of the package, as functions of scores and correctness masks:

- `marginal_log_loss`: -log of the probability mass on the correct entries, the shape of every REALM/ORQA loss;
- `span_losses`: ORQA's retriever loss and span (reader) loss for open-QA fine-tuning;
- `marginal_mlm_loss`, `gathered_marginal_loss`, `masked_token_log_prob`: REALM's masked-LM likelihood marginalised
  over retrieved blocks (pretraining and `RealmKnowledgeAugEncoder`);
- `ict_loss`, `in_batch_loss`: the Inverse Cloze Task's in-batch cross-entropy, with negatives gathered from every
  process (`gather_with_grad`).

The loss functions accept any number of leading batch dimensions where the docstring says `...`, so the same code
serves the 4.x-compatible `RealmReader` (one question) and the batched `RealmForOpenQA`.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
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


def span_losses(relevance_score, has_answers, reader_logits, reader_correct):
    """ORQA/REALM fine-tuning losses for one or more questions (leading dims `...`).

    relevance_score, has_answers: `[..., num_blocks]` (all retrieved blocks);
    reader_logits, reader_correct: `[..., rows, num_spans]` for the first `rows` blocks (`spans.gold_span_mask`).
    Returns retriever_loss `[...]` (ORQA's retriever loss: -log of the retrieval mass on blocks holding an answer)
    and reader_loss `[...]` (ORQA's span loss: -log of the reader's mass on the gold spans). Each loss is zero for a
    question whose blocks (or spans) contain no answer at all.
    """
    # [...]
    retriever_loss = marginal_log_loss(relevance_score, has_answers)
    retriever_loss = retriever_loss * has_answers.any(dim=-1).to(torch.float32)
    # [..., rows * num_spans]
    flat_logits, flat_correct = reader_logits.flatten(-2), reader_correct.flatten(-2)
    # [...]
    reader_loss = marginal_log_loss(flat_logits, flat_correct) * flat_correct.any(dim=-1).to(torch.float32)
    return retriever_loss, reader_loss


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


def masked_token_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target|z, x) in float32 from logits `[masked, k, vocab]` and targets `[masked]` -> `[masked, k]`; a
    target of -100 (a weighted position without a label) gives 0, as in `marginal_mlm_loss`."""
    masked, num_candidates, vocab = logits.shape
    # [masked * k]
    expanded = targets.unsqueeze(1).expand(masked, num_candidates).reshape(-1)
    return -F.cross_entropy(logits.float().reshape(-1, vocab), expanded, reduction="none").view(masked, num_candidates)


def ict_loss(query_embeddings: torch.Tensor, block_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each query's inner products with all blocks, the correct block being `labels[i]`.

    Args: query_embeddings `[b, d]`, block_embeddings `[B, d]` (all candidate blocks), labels `[b]` (long, in
    `[0, B)`). Computed in float32 whatever the embeddings' dtype.
    """
    # [b, B]
    scores = query_embeddings.float() @ block_embeddings.float().T
    return F.cross_entropy(scores, labels)


@dataclass
class InBatchLoss:
    """`in_batch_loss`'s result: the loss (this process's queries), the share of them whose own block scores
    highest (detached), and how many candidate blocks every query was scored against (the global batch)."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    num_candidates: int


def in_batch_loss(query_embeddings: torch.Tensor, block_embeddings: torch.Tensor) -> InBatchLoss:
    """ICT loss with in-batch negatives: query `i` `[b, d]` belongs with block `i` of this process's blocks
    `[n >= b, d]` (rows after the first b are extra negatives, e.g. hard negatives), and is scored against the blocks
    of every process (gathered with `gather_with_grad` when torch.distributed is set up)."""
    if block_embeddings.shape[0] < query_embeddings.shape[0]:
        raise ValueError(f"Got {query_embeddings.shape[0]} queries for {block_embeddings.shape[0]} blocks; query i "
                         "pairs with block i, so pass at least one block per query (extra blocks are negatives).")
    # [B, d], and where this process's blocks start in it
    candidates, offset = gather_with_grad(block_embeddings)
    labels = torch.arange(offset, offset + query_embeddings.shape[0], device=query_embeddings.device)
    loss = ict_loss(query_embeddings, candidates, labels)
    with torch.no_grad():
        # [b]
        best = (query_embeddings.float() @ candidates.float().T).argmax(dim=-1)
        accuracy = (best == labels).float().mean()
    return InBatchLoss(loss, accuracy, candidates.shape[0])


def gather_with_grad(local: torch.Tensor):
    """Concatenate `local` `[n_r, ...]` of every process in rank order; returns `(gathered [sum n_r, ...], offset)`.

    Processes may hold different numbers of rows. In backward, each process receives the sum over all processes of
    the gradients for its own rows, so with data-parallel gradient averaging the update equals that of one process
    computing the mean loss of the global batch. Without an initialised process group (or with one process) this is
    the identity with offset 0.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=local.device))
    sizes = [int(size) for size in sizes]
    return _GatherWithGrad.apply(local, sizes, rank), sum(sizes[:rank])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local, sizes, rank):
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
        longest = max(sizes)
        # [longest, ...]: all_gather needs equal shapes, so pad then trim
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        # [sum(sizes), ...]
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        # Every process's loss depends on our rows: sum those gradients, keep our slice.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop], None, None
