"""The two REALM-specific heads: the retrieval projection and the reader's span scorer.

The masked-LM head is transformers 5's `BertOnlyMLMHead` unchanged (same parameter names as 4.x REALM).
"""

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertLMPredictionHead

from modeling_realm.models.losses import mask_to_score, span_candidates


class RealmScorerProjection(nn.Module):
    """pooled `[batch, hidden]` -> retrieval embedding `[batch, retriever_proj_size]` (dense + LayerNorm).

    `predictions` is an MLM head that google's embedder checkpoints carry but never use; it is kept so their
    state dicts load without unexpected keys.
    """

    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.dense = nn.Linear(config.hidden_size, config.retriever_proj_size)
        self.LayerNorm = nn.LayerNorm(config.retriever_proj_size, eps=config.layer_norm_eps)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # [batch, retriever_proj_size]
        return self.LayerNorm(self.dense(pooled))


class RealmReaderProjection(nn.Module):
    """Scores every span of width <= `max_span_width` that lies inside the evidence block.

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
        starts, ends, span_mask = span_candidates(block_mask, self.max_span_width)
        # [rows, num_spans, span_hidden]
        span_hidden = start_projection.index_select(1, starts) + end_projection.index_select(1, ends)
        span_hidden = self.layer_normalization(self.relu(span_hidden))
        # [rows, num_spans]
        logits = self.dense_output(span_hidden).squeeze(-1)
        logits = logits + mask_to_score(span_mask, dtype=logits.dtype)
        return logits, starts, ends
