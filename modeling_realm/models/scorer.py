"""`RealmScorer`: relevance of candidate blocks to a query (transformers 4.x API)."""

import torch

from modeling_realm.models.outputs import RealmScorerOutput
from modeling_realm.models.pretrained import check_rank, flatten_candidates
from modeling_realm.models.towers import RealmTwoTowerModel


class RealmScorer(RealmTwoTowerModel):
    """Scores `[batch, num_candidates]` candidates against `[batch]` queries; loads
    `google/realm-cc-news-pretrained-scorer`.

    Args:
        config (`RealmConfig`).
        query_embedder (`RealmEmbedder`, *optional*): a separate query tower. By default queries and candidates
            share one embedder (unless `config.separate_query_embedder` is set).
    """

    def __init__(self, config, query_embedder=None):
        super().__init__(config)
        self._build_towers(config, query_embedder)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                candidate_input_ids=None, candidate_attention_mask=None, candidate_token_type_ids=None,
                candidate_inputs_embeds=None, head_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """Query `[batch, seq]` and candidates `[batch, num_candidates, cand_seq]` -> `RealmScorerOutput`.

        Candidates may also be given flattened as `[batch * num_candidates, cand_seq]`, in which case
        `config.num_candidates` says how many belong to each query.
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("RealmScorer needs input_ids or inputs_embeds for the queries.")
        if candidate_input_ids is None and candidate_inputs_embeds is None:
            raise ValueError("RealmScorer needs candidate_input_ids or candidate_inputs_embeds.")
        check_rank("RealmScorer input_ids", input_ids, (2,), "[batch, seq]")
        check_rank("RealmScorer candidate_input_ids", candidate_input_ids, (2, 3),
                   "[batch, num_candidates, seq] or [batch * num_candidates, seq]")
        batch = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]
        num_candidates = self._num_candidates(candidate_input_ids, candidate_inputs_embeds, batch)
        flags = dict(position_ids=position_ids, head_mask=head_mask, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states, return_dict=True)
        # [batch, retriever_proj_size]
        query_score = self.query_embedder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                          inputs_embeds=inputs_embeds, **flags).projected_score
        flat_ids, flat_mask, flat_types = flatten_candidates(candidate_input_ids, candidate_attention_mask,
                                                             candidate_token_type_ids)
        # [batch * num_candidates, retriever_proj_size]
        candidate_score = self.embedder(flat_ids, attention_mask=flat_mask, token_type_ids=flat_types,
                                        inputs_embeds=candidate_inputs_embeds, **flags).projected_score
        # [batch, num_candidates, retriever_proj_size]
        candidate_score = candidate_score.view(batch, num_candidates, -1)
        # [batch, num_candidates]
        relevance_score = torch.einsum("bd,bnd->bn", query_score, candidate_score)
        result = RealmScorerOutput(relevance_score=relevance_score, query_score=query_score,
                                   candidate_score=candidate_score)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()

    def _num_candidates(self, candidate_input_ids, candidate_inputs_embeds, batch: int) -> int:
        if candidate_input_ids is not None and candidate_input_ids.dim() == 3:
            if candidate_input_ids.shape[0] != batch:
                raise ValueError(
                    f"candidate_input_ids has {candidate_input_ids.shape[0]} rows of candidates for {batch} queries; "
                    "give one row of candidates per query."
                )
            return candidate_input_ids.shape[1]
        rows = candidate_input_ids.shape[0] if candidate_input_ids is not None else candidate_inputs_embeds.shape[0]
        if rows != batch * self.config.num_candidates:
            raise ValueError(
                f"Got {rows} flattened candidates for {batch} queries, but config.num_candidates="
                f"{self.config.num_candidates}; pass candidates as [batch, num_candidates, seq] or fix num_candidates."
            )
        return self.config.num_candidates
