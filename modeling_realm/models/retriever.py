"""`RealmRetriever`: the trainable retrieval model (query tower + block tower) and the index it searches.

Unlike transformers 4.x's `RealmRetriever` (a holder of a pickled block array), this is a `PreTrainedModel`.
Following Atlas, the index is attached to the model, not stored in its weights: `retriever.index = index` (or
`RealmRetriever(config, index=index)`), and the model never decides when the index is rebuilt.
"""

import numpy as np
import torch
from torch.nn import functional as F

from modeling_realm.models.outputs import RealmRetrieverOutput
from modeling_realm.models.towers import RealmTwoTowerModel
from modeling_realm.retrieval import IndexSlot, retrieve_blocks


class RealmRetriever(RealmTwoTowerModel):
    """Embeds queries and blocks, scores them with gradients, and searches an attached index.

    The state dict has the layout of `RealmScorer` (`embedder.*`, plus `query_embedder.*` when
    `config.separate_query_embedder`), so google's scorer checkpoint loads into it directly.

    Args:
        config (`RealmConfig`).
        query_embedder (`RealmEmbedder`, *optional*): a separate query tower.
        index (*optional*): any object with `search(query_embeddings: np.ndarray [batch, dim], k) ->
            (scores [batch, k], block_ids [batch, k])` and a `dimension` attribute, such as
            `index_builder.BlockIndex`.
    """

    def __init__(self, config, query_embedder=None, index=None):
        super().__init__(config)
        self._build_towers(config, query_embedder)
        self.index = index
        self.post_init()

    index = IndexSlot()  # the attached block index (None until one is attached)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, block_input_ids=None,
                block_attention_mask=None, block_token_type_ids=None, labels=None, return_dict=None):
        """Relevance of blocks to queries, with gradients to both towers.

        Args:
            input_ids, attention_mask, token_type_ids: queries `[batch, q_seq]`.
            block_input_ids, block_attention_mask, block_token_type_ids: either `[num_blocks, seq]`, blocks every
                query is scored against (in-batch negatives), or `[batch, num_blocks, seq]`, blocks per query.
            labels (`torch.LongTensor` `[batch]`, *optional*): position of each query's gold block among the
                blocks; gives `loss` = cross-entropy of the softmax over blocks.
        Returns:
            `RealmRetrieverOutput` with relevance_score `[batch, num_blocks]`.
        """
        if block_input_ids is None:
            raise ValueError("RealmRetriever.forward needs block_input_ids to score; use embed_queries() and "
                             "retrieve() to search an index instead.")
        # [batch, proj]
        query_embeddings = self.embed_queries(input_ids, attention_mask, token_type_ids)
        # [num_blocks, proj] or [batch, num_blocks, proj]
        block_embeddings = self.embed_blocks(block_input_ids, block_attention_mask, block_token_type_ids)
        relevance_score = relevance_scores(query_embeddings, block_embeddings)
        loss = None if labels is None else F.cross_entropy(relevance_score, labels)
        result = RealmRetrieverOutput(loss=loss, relevance_score=relevance_score, query_embeddings=query_embeddings,
                                      block_embeddings=block_embeddings)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()

    @torch.no_grad()
    def retrieve(self, input_ids, attention_mask=None, token_type_ids=None, k=None, return_blocks: bool = True):
        """Search the attached index for the top `k` blocks of each query `[batch, q_seq]`.

        Returns a `RetrievedBlocks` with block_ids and scores (numpy `[batch, k]`, best first) and, when the index
        has `get_blocks`, the blocks themselves (dicts with block_id, doc_id, title, text). The scores come from the
        index; use `relevance_to(query_embeddings, block_ids)` or `forward` when gradients are needed.
        """
        if self.index is None:
            raise ValueError("No index is attached to this RealmRetriever: build one with index_builder and set "
                             "`retriever.index = index` (or pass index= to from_pretrained).")
        k = self.config.reader_beam_size if k is None else k
        # [batch, proj], detached: the index only picks block ids
        queries = self.embed_queries(input_ids, attention_mask, token_type_ids)
        return retrieve_blocks(self.index, queries, k, with_blocks=return_blocks)

    def relevance_to(self, query_embeddings: torch.Tensor, block_ids) -> torch.Tensor:
        """Scores `[batch, k]` of queries `[batch, proj]` (with gradients) against the index's stored embeddings
        of `block_ids` `[batch, k]` (frozen, as in ORQA/REALM fine-tuning)."""
        stored = torch.from_numpy(np.asarray(self.index.get_embeddings(block_ids)))
        return relevance_scores(query_embeddings, stored.to(query_embeddings))


def relevance_scores(query_embeddings: torch.Tensor, block_embeddings: torch.Tensor) -> torch.Tensor:
    """Inner products: queries `[batch, d]` with blocks `[n, d]` (shared) or `[batch, n, d]` -> `[batch, n]`."""
    if block_embeddings.dim() == 2:
        # [batch, n]
        return query_embeddings @ block_embeddings.T
    # [batch, n]
    return torch.einsum("bd,bnd->bn", query_embeddings, block_embeddings)
