"""The retrieval projection head of `RealmEmbedder` (the reader's span scorer head is in `spans.py`).

The masked-LM head is transformers 5's `BertOnlyMLMHead` unchanged (same parameter names as 4.x REALM).
"""

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertLMPredictionHead


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
