"""`RealmKnowledgeAugEncoder`: masked-LM over `[CLS] query [SEP] block [SEP]`, marginalised over blocks."""

import torch
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from modeling_realm.models.losses import marginal_mlm_loss
from modeling_realm.models.pretrained import (
    PREDICTION_BIAS_TIE,
    RealmPreTrainedModel,
    build_backbone,
    check_rank,
    flatten_candidates,
    run_backbone,
)


class RealmKnowledgeAugEncoder(RealmPreTrainedModel):
    """The knowledge-augmented encoder of REALM pretraining; loads `google/realm-cc-news-pretrained-encoder`.

    State dict: `realm.*` (BERT) and `cls.predictions.*` (MLM head whose decoder is tied to the word embeddings).
    """

    _tied_weights_keys = {"cls.predictions.decoder.weight": "realm.embeddings.word_embeddings.weight",
                          **PREDICTION_BIAS_TIE}

    def __init__(self, config):
        super().__init__(config)
        self.realm = build_backbone(config)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.realm.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.realm.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, relevance_score=None, labels=None, mlm_mask=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """Joint inputs `[batch, num_candidates, seq]` -> `MaskedLMOutput`.

        logits: `[batch * num_candidates, seq, vocab]`. With `labels` `[batch, seq]` (-100 = ignore) and
        `relevance_score` `[batch, num_candidates]`, `loss` is the marginal masked-LM loss of
        `losses.marginal_mlm_loss`, averaged with weights `mlm_mask` `[batch, seq]` (default: all positions).
        Without `relevance_score` every candidate of a query is equally relevant (flat `[rows, seq]` inputs with
        `[rows, seq]` labels: one candidate each, the plain masked-LM loss), as transformers' common training
        tests call a masked-LM model.
        """
        check_rank("RealmKnowledgeAugEncoder input_ids", input_ids, (2, 3), "[batch, num_candidates, seq]")
        check_rank("RealmKnowledgeAugEncoder labels", labels, (2,), "[batch, seq]")
        check_rank("RealmKnowledgeAugEncoder relevance_score", relevance_score, (2,), "[batch, num_candidates]")
        # [batch, num_candidates, seq] -> [batch * num_candidates, seq]
        flat = flatten_candidates(input_ids, attention_mask, token_type_ids)
        outputs = run_backbone(self.realm, *flat, position_ids, head_mask, inputs_embeds, output_attentions,
                               output_hidden_states)
        # [batch * num_candidates, seq, vocab]
        prediction_scores = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            if relevance_score is None:
                relevance_score = uniform_relevance(input_ids if input_ids is not None else inputs_embeds, labels,
                                                    prediction_scores.shape[0])
            batch, num_candidates = relevance_score.shape
            if prediction_scores.shape[0] != batch * num_candidates:
                raise ValueError(
                    f"relevance_score has {num_candidates} candidates for {batch} queries, but the encoder got "
                    f"{prediction_scores.shape[0]} joint sequences; they must match (batch * num_candidates)."
                )
            # [batch, num_candidates, seq, vocab]
            per_candidate = prediction_scores.view(batch, num_candidates, *prediction_scores.shape[1:])
            loss = marginal_mlm_loss(per_candidate, labels, relevance_score, mlm_mask)
        result = MaskedLMOutput(loss=loss, logits=prediction_scores, hidden_states=outputs.hidden_states,
                                attentions=outputs.attentions)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()


def uniform_relevance(inputs, labels, sequences: int):
    """Equal relevance `[batch, num_candidates]` (zeros) for `labels` `[batch, seq]` over `sequences` joint inputs.

    inputs: `[batch, num_candidates, seq(, hidden)]` gives num_candidates; flat inputs `[batch * num_candidates, ...]`
    take it from the labels' batch.
    """
    batch = labels.shape[0]
    if inputs.dim() == (4 if inputs.is_floating_point() else 3):
        batch, num_candidates = inputs.shape[:2]
    elif sequences % batch == 0:
        num_candidates = sequences // batch
    else:
        raise ValueError(f"labels has {batch} rows for {sequences} joint sequences, which is not a whole number of "
                         "candidates per query; pass relevance_score [batch, num_candidates].")
    return labels.new_zeros((batch, num_candidates), dtype=torch.float32)
