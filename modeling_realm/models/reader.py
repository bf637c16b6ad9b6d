"""`RealmReader`: answer-span scoring over the retrieved blocks of one question (transformers 4.x API)."""

from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from modeling_realm.models.losses import span_losses
from modeling_realm.models.outputs import RealmReaderOutput
from modeling_realm.models.pretrained import (
    PREDICTION_BIAS_TIE,
    BackboneEmbeddingsMixin,
    RealmPreTrainedModel,
    build_backbone,
    check_rank,
    run_backbone,
)
from modeling_realm.models.spans import RealmReaderProjection, best_span, check_reader_length, gold_span_mask


class RealmReader(BackboneEmbeddingsMixin, RealmPreTrainedModel):
    """Reads the retrieved blocks of one question and scores answer spans; loads `google/realm-orqa-*-reader`.

    State dict: `realm.*` (BERT), `cls.predictions.*` (unused MLM head kept for compatibility) and
    `qa_outputs.*` (span scorer).
    """

    _tied_weights_keys = dict(PREDICTION_BIAS_TIE)

    def __init__(self, config):
        super().__init__(config)
        self.realm = build_backbone(config)
        self.cls = BertOnlyMLMHead(config)
        self.qa_outputs = RealmReaderProjection(config)
        self.post_init()

    def score_spans(self, input_ids, attention_mask, token_type_ids, block_mask, relevance_score, **backbone_kwargs):
        """Span scores of reader inputs `[rows, seq]` given their blocks' relevance `[rows]`.

        Returns reader_logits `[rows, num_spans]` (span score + block relevance), starts and ends `[num_spans]`,
        and the backbone output.
        """
        outputs = run_backbone(self.realm, input_ids, attention_mask, token_type_ids, **backbone_kwargs)
        # [rows, num_spans]
        reader_logits, starts, ends = self.qa_outputs(outputs.last_hidden_state, block_mask)
        reader_logits = reader_logits + relevance_score.unsqueeze(-1)
        return reader_logits, starts, ends, outputs

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, relevance_score=None, block_mask=None, start_positions=None, end_positions=None,
                has_answers=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        """Score spans of the first `rows` retrieved blocks of one question.

        input_ids `[rows, seq]` (`[CLS] question [SEP] block [SEP]`, usually rows = `config.reader_beam_size`);
        relevance_score `[num_blocks]` and block_mask `[num_blocks, seq]` for all retrieved blocks (the first
        `rows` are read); with start_positions/end_positions `[num_blocks, num_answers]` and has_answers
        `[num_blocks]`, the retriever and reader marginal log-likelihood losses are returned as well.
        """
        if relevance_score is None:
            raise ValueError("RealmReader needs relevance_score [num_blocks] to score spans.")
        if block_mask is None:
            raise ValueError("RealmReader needs block_mask [num_blocks, seq] to tell block tokens from the question.")
        check_rank("RealmReader input_ids", input_ids, (2,), "[reader_beam_size, seq]")
        rows, seq_len = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        check_reader_length(seq_len, self.config.max_span_width)
        if relevance_score.shape[0] < rows or block_mask.shape[0] < rows:
            raise ValueError(
                f"RealmReader got {rows} reader inputs but relevance_score has {relevance_score.shape[0]} and "
                f"block_mask {block_mask.shape[0]} rows; give a score and a mask for every block read."
            )
        reader_logits, starts, ends, outputs = self.score_spans(
            input_ids, attention_mask, token_type_ids, block_mask[:rows], relevance_score[:rows],
            position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        block_idx, candidate, start_pos, end_pos = best_span(reader_logits, starts, ends)
        losses = {}
        if start_positions is not None and end_positions is not None and has_answers is not None:
            # [rows, num_spans]
            reader_correct = gold_span_mask(starts, ends, start_positions.clamp(-1, seq_len)[:rows],
                                            end_positions.clamp(-1, seq_len)[:rows])
            retriever_loss, reader_loss = span_losses(relevance_score, has_answers, reader_logits, reader_correct)
            losses = dict(loss=(retriever_loss + reader_loss).mean(), retriever_loss=retriever_loss,
                          reader_loss=reader_loss, retriever_correct=has_answers, reader_correct=reader_correct)
        # ModelOutput keeps fields in the order they are set, so build it once (loss first, as 4.x's tuple).
        result = RealmReaderOutput(**losses, block_idx=block_idx, candidate=candidate, start_pos=start_pos.view(1),
                                   end_pos=end_pos.view(1), hidden_states=outputs.hidden_states,
                                   attentions=outputs.attentions)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()
