"""`ModelOutput` dataclasses returned by the REALM models (loss first, as in transformers)."""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class RealmEmbedderOutput(ModelOutput):
    """Output of `RealmEmbedder`.

    Args:
        projected_score (`torch.FloatTensor` of shape `[batch, retriever_proj_size]`): the retrieval embedding.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): per-layer states `[batch, seq, hidden]`,
            returned with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): per-layer attention weights
            `[batch, heads, seq, seq]`, returned with `output_attentions=True` (eager attention only).
    """

    projected_score: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RealmScorerOutput(ModelOutput):
    """Output of `RealmScorer`.

    Args:
        relevance_score (`torch.FloatTensor` of shape `[batch, num_candidates]`): inner products of query and
            candidate embeddings (before softmax).
        query_score (`torch.FloatTensor` of shape `[batch, retriever_proj_size]`): query embeddings.
        candidate_score (`torch.FloatTensor` of shape `[batch, num_candidates, retriever_proj_size]`): candidate
            embeddings.
    """

    relevance_score: torch.FloatTensor | None = None
    query_score: torch.FloatTensor | None = None
    candidate_score: torch.FloatTensor | None = None


@dataclass
class RealmRetrieverOutput(ModelOutput):
    """Output of `RealmRetriever.forward`.

    Args:
        loss (`torch.FloatTensor` of shape `[]`, *optional*): negative log-likelihood of the gold candidate, returned
            when `labels` are given.
        relevance_score (`torch.FloatTensor` of shape `[batch, num_blocks]`): query-block inner products; with
            gradients to both towers.
        query_embeddings (`torch.FloatTensor` of shape `[batch, retriever_proj_size]`).
        block_embeddings (`torch.FloatTensor` of shape `[batch, num_blocks, retriever_proj_size]`).
    """

    loss: torch.FloatTensor | None = None
    relevance_score: torch.FloatTensor | None = None
    query_embeddings: torch.FloatTensor | None = None
    block_embeddings: torch.FloatTensor | None = None


@dataclass
class RealmReaderOutput(ModelOutput):
    """Output of `RealmReader` (one question whose blocks form the leading dimension, as in transformers 4.x).

    Args:
        loss (`torch.FloatTensor` of shape `[]`, *optional*): retriever loss + reader loss.
        retriever_loss (`torch.FloatTensor` of shape `[]`, *optional*): marginal log-likelihood loss over the
            blocks that contain an answer.
        reader_loss (`torch.FloatTensor` of shape `[]`, *optional*): marginal log-likelihood loss over gold spans.
        retriever_correct (`torch.BoolTensor` of shape `[searcher_beam_size]`, *optional*): blocks with an answer.
        reader_correct (`torch.BoolTensor` of shape `[reader_beam_size, num_spans]`, *optional*): gold spans.
        block_idx (`torch.LongTensor` of shape `[]`): block holding the best span.
        candidate (`torch.LongTensor` of shape `[]`): index of the best span among the enumerated spans.
        start_pos (`torch.LongTensor` of shape `[1]`): start of the best span in the reader input.
        end_pos (`torch.LongTensor` of shape `[1]`): end (inclusive) of the best span in the reader input.
        hidden_states, attentions: as in `RealmEmbedderOutput`.
    """

    loss: torch.FloatTensor | None = None
    retriever_loss: torch.FloatTensor | None = None
    reader_loss: torch.FloatTensor | None = None
    retriever_correct: torch.BoolTensor | None = None
    reader_correct: torch.BoolTensor | None = None
    block_idx: torch.LongTensor | None = None
    candidate: torch.LongTensor | None = None
    start_pos: torch.LongTensor | None = None
    end_pos: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RealmForOpenQAOutput(ModelOutput):
    """Output of `RealmForOpenQA.forward` for a batch of questions.

    Args:
        loss (`torch.FloatTensor` of shape `[]`, *optional*): mean over questions of retriever + reader loss.
        retriever_loss (`torch.FloatTensor` of shape `[batch]`, *optional*).
        reader_loss (`torch.FloatTensor` of shape `[batch]`, *optional*).
        relevance_score (`torch.FloatTensor` of shape `[batch, num_blocks]`): question-block scores.
        reader_logits (`torch.FloatTensor` of shape `[batch, reader_beam_size, num_spans]`): span scores including
            the block's relevance score.
        block_idx (`torch.LongTensor` of shape `[batch]`): position, among the question's blocks, of the block
            holding the best span.
        block_ids (`torch.LongTensor` of shape `[batch]`, *optional*): corpus id of that block, when block ids
            were given.
        start_pos (`torch.LongTensor` of shape `[batch]`), end_pos (`torch.LongTensor` of shape `[batch]`): best
            span in the reader input of that block (end inclusive).
        predicted_answer_ids (`list[torch.LongTensor]`): the wordpiece ids of each predicted answer.
    """

    loss: torch.FloatTensor | None = None
    retriever_loss: torch.FloatTensor | None = None
    reader_loss: torch.FloatTensor | None = None
    relevance_score: torch.FloatTensor | None = None
    reader_logits: torch.FloatTensor | None = None
    block_idx: torch.LongTensor | None = None
    block_ids: torch.LongTensor | None = None
    start_pos: torch.LongTensor | None = None
    end_pos: torch.LongTensor | None = None
    predicted_answer_ids: list[torch.LongTensor] | None = None
