"""Answer spans: every span of width <= `max_span_width` inside a block (`enumerate_spans`), the reader's span scorer
head (`RealmReaderProjection`), which spans are gold (`gold_span_mask`), and how the best ones are chosen (`best_span`,
4.x's choice; `ranked_spans`, the order `answer()` reports).

The span loss is in `losses.py` (`span_losses`) with every other loss.
"""

import torch
from torch import nn

from modeling_realm.models.losses import mask_to_score


def enumerate_spans(block_mask: torch.Tensor, max_span_width: int):
    """Enumerate spans of width 1..max_span_width, widths in increasing order, starts left to right.

    block_mask: `[..., seq]` bool, true on the block's tokens.
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


def check_reader_length(seq_len: int, max_span_width: int):
    if seq_len < max_span_width:
        raise ValueError(
            f"Reader inputs have {seq_len} tokens, fewer than config.max_span_width={max_span_width}; "
            "pad reader inputs to at least max_span_width tokens (config.reader_seq_len is the usual length)."
        )


class RealmReaderProjection(nn.Module):
    """Scores every span of width <= `max_span_width` that lies inside the block.

    A span's score is `w . LayerNorm(relu(start_proj[start] + end_proj[end]))`; spans outside the block get the
    most negative finite score.
    """

    def __init__(self, config):
        super().__init__()
        self.max_span_width = config.max_span_width
        self.dense_intermediate = nn.Linear(config.hidden_size, config.span_hidden_size * 2)
        self.dense_output = nn.Linear(config.span_hidden_size, 1)
        self.layer_normalization = nn.LayerNorm(config.span_hidden_size, eps=config.reader_layer_norm_eps)
        self.relu = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor, block_mask: torch.Tensor):
        """hidden_states `[rows, seq, hidden]`, block_mask `[rows, seq]` ->
        (logits `[rows, num_spans]`, starts `[num_spans]`, ends `[num_spans]`)."""
        # [rows, seq, span_hidden] x 2
        start_projection, end_projection = self.dense_intermediate(hidden_states).chunk(2, dim=-1)
        starts, ends, span_mask = enumerate_spans(block_mask, self.max_span_width)
        # [rows, num_spans, span_hidden]
        span_hidden = start_projection.index_select(1, starts) + end_projection.index_select(1, ends)
        span_hidden = self.layer_normalization(self.relu(span_hidden))
        # [rows, num_spans]
        logits = self.dense_output(span_hidden).squeeze(-1)
        logits = logits + mask_to_score(span_mask, dtype=logits.dtype)
        return logits, starts, ends


def best_span(reader_logits, starts, ends):
    """Pick the best (block, span) as transformers 4.x did.

    reader_logits `[..., rows, num_spans]` -> block_idx `[...]`, candidate `[...]`, start `[...]`, end `[...]`.
    """
    # [...]
    block_idx = reader_logits.max(dim=-1).values.argmax(dim=-1)
    # [...]
    candidate = reader_logits.max(dim=-2).values.argmax(dim=-1)
    return block_idx, candidate, starts[candidate], ends[candidate]


def ranked_spans(logits: torch.Tensor):
    """(row, span, probability) of one question's spans from logits `[rows, num_spans]`, best first: the probability
    is the softmax over every span of every row read (ties keep the order of rows, then spans)."""
    num_spans = logits.shape[-1]
    # [rows * num_spans]
    probabilities = logits.float().flatten().softmax(-1)
    for flat in probabilities.argsort(descending=True, stable=True).tolist():
        row, span = divmod(flat, num_spans)
        yield row, span, float(probabilities[flat])
