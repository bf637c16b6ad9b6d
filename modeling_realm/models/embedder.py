"""`RealmEmbedder`: text -> 128-d retrieval embedding (BERT -> pooler -> dense -> LayerNorm)."""

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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """input_ids `[batch, seq]` (long) -> `RealmEmbedderOutput.projected_score` `[batch, retriever_proj_size]`."""
        check_rank("RealmEmbedder input_ids", input_ids, (2,), "[batch, seq]")
        check_rank("RealmEmbedder inputs_embeds", inputs_embeds, (3,), "[batch, seq, hidden]")
        outputs = run_backbone(self.realm, input_ids, attention_mask, token_type_ids, position_ids, head_mask,
                               inputs_embeds, output_attentions, output_hidden_states)
        # [batch, retriever_proj_size]
        projected_score = self.cls(outputs.pooler_output)
        result = RealmEmbedderOutput(projected_score=projected_score, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()
