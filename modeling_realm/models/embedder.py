"""`RealmEmbedder`: text -> 128-d retrieval embedding (BERT -> pooling -> dense -> LayerNorm).

The pooling is `config.retriever_pooling`: the pooler over `[CLS]` (google's checkpoints) or the mean of the token
states over the attention mask (sentence encoders).
"""

import torch

from modeling_realm.models.heads import RealmScorerProjection
from modeling_realm.models.outputs import RealmEmbedderOutput
from modeling_realm.models.pretrained import (
    PREDICTION_BIAS_TIE,
    BackboneEmbeddingsMixin,
    RealmPreTrainedModel,
    build_backbone,
    check_rank,
    run_backbone,
)


class RealmEmbedder(BackboneEmbeddingsMixin, RealmPreTrainedModel):
    """Embeds queries or blocks for retrieval; loads `google/realm-cc-news-pretrained-embedder`.

    State dict: `realm.*` (BERT) and `cls.*` (projection, plus an unused MLM head kept for compatibility).
    """

    _tied_weights_keys = dict(PREDICTION_BIAS_TIE)

    def __init__(self, config):
        super().__init__(config)
        self.realm = build_backbone(config)
        self.cls = RealmScorerProjection(config)
        self.post_init()

    def get_block_embedder(self):
        """The module that embeds blocks (what `index_builder` encodes with and fingerprints): this one."""
        return self

    def pool(self, outputs, attention_mask=None) -> torch.Tensor:
        """The backbone's `outputs` -> the pooled vector `[batch, hidden]` the projection reads."""
        if self.config.retriever_pooling == "mean":
            return mean_pool(outputs.last_hidden_state, attention_mask)
        return outputs.pooler_output

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """input_ids `[batch, seq]` (long) -> `RealmEmbedderOutput.projected_score` `[batch, retriever_proj_size]`."""
        check_rank("RealmEmbedder input_ids", input_ids, (2,), "[batch, seq]")
        check_rank("RealmEmbedder inputs_embeds", inputs_embeds, (3,), "[batch, seq, hidden]")
        outputs = run_backbone(self.realm, input_ids, attention_mask, token_type_ids, position_ids, head_mask,
                               inputs_embeds, output_attentions, output_hidden_states)
        # [batch, hidden] -> [batch, retriever_proj_size]
        projected_score = self.cls(self.pool(outputs, attention_mask))
        result = RealmEmbedderOutput(projected_score=projected_score, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """hidden_states `[batch, seq, hidden]`, attention_mask `[batch, seq]` (None: all ones) -> mean over the tokens the
    mask keeps `[batch, hidden]` (padding ignored; an all-padding row gives zeros)."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    # [batch, seq, 1]
    weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    # [batch, hidden] / [batch, 1]
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
