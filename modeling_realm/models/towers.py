"""Query and block towers shared by `RealmScorer` and `RealmRetriever`.

transformers 4.x registered one embedder under two names (`embedder` and `query_embedder`), which transformers 5
refuses to save. Here the block tower is always `embedder`; the query tower is registered as `query_embedder`
only when it is a separate module (`config.separate_query_embedder`). Otherwise `query_embedder` is a read-only
alias of `embedder`, and the duplicated `query_embedder.*` tensors of google's scorer checkpoint are skipped on
load. Both layouts save and reload with no shared tensors.
"""

from modeling_realm.models.embedder import RealmEmbedder
from modeling_realm.models.pretrained import RealmPreTrainedModel, check_rank, flatten_candidates, resize_towers


class RealmTwoTowerModel(RealmPreTrainedModel):
    """Base of models with a block embedder and a (shared or separate) query embedder."""

    def _build_towers(self, config, query_embedder=None):
        self.embedder = RealmEmbedder(config)
        if query_embedder is not None:
            config.separate_query_embedder = True
        if config.separate_query_embedder:
            self.query_embedder = query_embedder if query_embedder is not None else RealmEmbedder(config)
        else:
            # google's scorer files store the shared tower twice; the second copy is redundant.
            self._keys_to_ignore_on_load_unexpected = [r"^query_embedder\."]

    def get_block_embedder(self):
        """The block tower (what `index_builder` encodes with and fingerprints)."""
        return self.embedder

    def get_input_embeddings(self):
        """The query tower's word embeddings (the model's `input_ids` are queries)."""
        return self.query_embedder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.query_embedder.set_input_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resize the vocabulary of both towers (one when they are shared)."""
        return resize_towers(self, [self.query_embedder, self.embedder], new_num_tokens, pad_to_multiple_of,
                             mean_resizing)

    @property
    def query_embedder(self):
        """The query tower: a separate `RealmEmbedder`, or `embedder` itself when the towers are shared."""
        separate = self._modules.get("query_embedder")
        return separate if separate is not None else self._modules["embedder"]

    def embed_queries(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        """`[batch, seq]` token ids -> `[batch, retriever_proj_size]` query embeddings (with gradients)."""
        return self.query_embedder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                   inputs_embeds=inputs_embeds, return_dict=True).projected_score

    def embed_blocks(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        """Block token ids `[n, seq]` or `[batch, n, seq]` -> embeddings `[n, proj]` or `[batch, n, proj]`."""
        check_rank("block input_ids", input_ids, (2, 3), "[num_blocks, seq] or [batch, num_blocks, seq]")
        leading = input_ids.shape[:-1] if input_ids is not None else inputs_embeds.shape[:-2]
        flat_ids, flat_mask, flat_types = flatten_candidates(input_ids, attention_mask, token_type_ids)
        if inputs_embeds is not None and inputs_embeds.dim() > 3:
            # [batch, n, seq, hidden] -> [batch * n, seq, hidden]
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        # [batch * n, retriever_proj_size]
        embeddings = self.embedder(input_ids=flat_ids, attention_mask=flat_mask, token_type_ids=flat_types,
                                   inputs_embeds=inputs_embeds, return_dict=True).projected_score
        # [*leading, retriever_proj_size]
        return embeddings.view(*leading, embeddings.shape[-1])
