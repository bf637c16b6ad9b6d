"""`RealmForOpenQA`: question embedder + reader for open-domain QA, over a batch of questions."""

import torch
from transformers import initialization as init

from modeling_realm.models.embedder import RealmEmbedder
from modeling_realm.models.losses import span_losses
from modeling_realm.models.outputs import RealmForOpenQAOutput
from modeling_realm.models.pretrained import RealmPreTrainedModel, check_rank, resize_towers
from modeling_realm.models.reader import RealmReader
from modeling_realm.models.spans import best_span, check_reader_length, gold_span_mask
from modeling_realm.openqa.answering import answer_questions
from modeling_realm.retrieval import IndexSlot


class RealmForOpenQA(RealmPreTrainedModel):
    """Open-domain QA with REALM/ORQA; loads `google/realm-orqa-{nq,wq}-openqa` and `realm-cc-news-pretrained-openqa`.

    State dict: `embedder.*` (question tower), `reader.*` and `block_emb` `[num_block_records, retriever_proj_size]`,
    the precomputed block embeddings of google's checkpoints. `block_emb` is only ever indexed row by row here
    (never scanned or copied), so a memory-mapped checkpoint keeps it on disk; turning it into a searchable
    `BlockIndex` is the job of `index_builder`.

    Unlike transformers 4.x, `forward` takes any number of questions: each comes with the ids (or embeddings) of
    its candidate blocks and the reader inputs `[CLS] question [SEP] block [SEP]` of those blocks.
    """

    def __init__(self, config, index=None, tokenizer=None):
        super().__init__(config)
        self.embedder = RealmEmbedder(config)
        self.reader = RealmReader(config)
        # Not zero-filled here: at full scale this is 6.8 GB and from_pretrained overwrites it anyway.
        self.register_buffer("block_emb", torch.empty(config.num_block_records, config.retriever_proj_size))
        self.index = index
        self.tokenizer = tokenizer
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, index=None, tokenizer=None, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus the `index` to answer from (a `BlockIndex`) and the `tokenizer`
        (default: the one saved with the model, loaded on the first `answer()`)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) on request
        model.index, model.tokenizer = index, tokenizer
        return loaded

    index = IndexSlot()  # the BlockIndex that answer() retrieves from (None until one is attached)

    def answer(self, questions, top_k: int = 1, batch_size: int = 8, retrieval: str | None = None):
        """Answer questions from the attached index.

        Args:
            questions: a string or a list of strings.
            top_k: answers per question (best first).
            batch_size: questions per forward pass (the answers do not depend on it).
            retrieval: how the blocks to read are found: "dense" (the question tower), "lexical" (BM25 of the
                question) or "hybrid" (both, fused); None: hybrid when the index has a lexical part, else dense.
        Returns:
            per question, a dict (top_k=1) or a list of dicts with `answer`, `score` (probability over all spans
            of the read blocks), `start`/`end` (character offsets of the answer in `text`), and the evidence:
            `block_id`, `doc_id`, `title`, `text`. A single string gives a single result instead of a list.
        """
        single = isinstance(questions, str)
        results = answer_questions(self, self._answer_tokenizer(), [questions] if single else list(questions),
                                   top_k=top_k, batch_size=batch_size, retrieval=retrieval)
        results = [answers[0] if top_k == 1 and answers else answers for answers in results]
        return results[0] if single else results

    def get_block_embedder(self):
        """None: this model holds only the question tower; its block embeddings are the precomputed `block_emb`."""
        return None

    def get_input_embeddings(self):
        """The question tower's word embeddings (the model's `input_ids` are questions)."""
        return self.embedder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.embedder.set_input_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resize the vocabulary of the question tower and of the reader."""
        return resize_towers(self, [self.embedder, self.reader], new_num_tokens, pad_to_multiple_of, mean_resizing)

    def _answer_tokenizer(self):
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            if len(tokenizer) < self.config.vocab_size // 2:  # e.g. only the special tokens: every word is [UNK]
                raise ValueError(f"The tokenizer found at {self.name_or_path!r} has {len(tokenizer)} tokens for a "
                                 f"model of {self.config.vocab_size}: the checkpoint was saved without its tokenizer "
                                 "files. Pass one with RealmForOpenQA.from_pretrained(path, tokenizer=tokenizer), or "
                                 "save it next to the model with tokenizer.save_pretrained(path).")
            self.tokenizer = tokenizer
        return self.tokenizer

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.zeros_(self.block_emb)

    @property
    def searcher_beam_size(self) -> int:
        """Blocks retrieved per question: `searcher_beam_size` when training, `reader_beam_size` otherwise."""
        return self.config.searcher_beam_size if self.training else self.config.reader_beam_size

    def embed_questions(self, input_ids=None, attention_mask=None, token_type_ids=None):
        """`[batch, seq]` question ids -> `[batch, retriever_proj_size]` embeddings."""
        return self.embedder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             return_dict=True).projected_score

    def block_embedding_to(self, device):
        """Move `block_emb` alone to `device` (transformers 4.x's API: keep the 13M x 128 block embeddings on the CPU
        while the towers run on a GPU, `model.to("cuda"); model.block_embedding_to("cpu")`). Rows are read from
        wherever it lies and moved to the question embeddings' device."""
        self.block_emb = self.block_emb.to(device)
        return self

    def lookup_block_embeddings(self, block_ids: torch.LongTensor) -> torch.Tensor:
        """Rows of `block_emb` for block ids `[...]` -> `[..., retriever_proj_size]` (only those rows are read)."""
        if block_ids.numel() and (block_ids.min() < 0 or block_ids.max() >= self.block_emb.shape[0]):
            raise ValueError(
                f"block_ids must lie in [0, {self.block_emb.shape[0]}) (the rows of block_emb); got ids from "
                f"{int(block_ids.min())} to {int(block_ids.max())}."
            )
        rows = self.block_emb.index_select(0, block_ids.reshape(-1).to(self.block_emb.device))
        return rows.view(*block_ids.shape, -1)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, block_ids=None,
                block_embeddings=None, reader_input_ids=None, reader_attention_mask=None,
                reader_token_type_ids=None, block_mask=None, has_answers=None, start_positions=None,
                end_positions=None, return_dict=None):
        """Answer a batch of questions from their candidate blocks.

        Args:
            input_ids, attention_mask, token_type_ids: questions `[batch, q_seq]`.
            block_ids (`torch.LongTensor` `[batch, num_blocks]`): candidate blocks as rows of `block_emb`, best
                first; or block_embeddings (`[batch, num_blocks, retriever_proj_size]`) given directly.
            reader_input_ids, reader_attention_mask, reader_token_type_ids: `[batch, rows, seq]`
                `[CLS] question [SEP] block [SEP]` for the first rows (<= num_blocks) blocks; at most
                `config.reader_beam_size` of them are read.
            block_mask (`torch.BoolTensor` `[batch, rows, seq]`): true on the block's own tokens (answer spans
                must lie there).
            has_answers (`[batch, num_blocks]` bool), start_positions / end_positions (`[batch, rows, num_answers]`,
                -1 pads): gold annotations; when given, the ORQA retriever + reader losses are returned.
        Returns:
            `RealmForOpenQAOutput`; with one question and the same blocks, its block_idx/start_pos/end_pos/loss
            equal transformers 4.x's `reader_output`.
        """
        check_rank("RealmForOpenQA input_ids", input_ids, (2,), "[batch, q_seq]")
        check_rank("RealmForOpenQA reader_input_ids", reader_input_ids, (3,), "[batch, rows, seq]")
        if block_embeddings is None:
            if block_ids is None:
                raise ValueError("RealmForOpenQA needs the candidate blocks: pass block_ids or block_embeddings.")
            block_embeddings = self.lookup_block_embeddings(block_ids)
        if reader_input_ids is None or block_mask is None:
            raise ValueError("RealmForOpenQA needs reader_input_ids and block_mask for the blocks it reads.")
        batch, rows, seq_len = reader_input_ids.shape
        rows = min(rows, self.config.reader_beam_size)
        check_reader_length(seq_len, self.config.max_span_width)
        # [batch, retriever_proj_size]
        question_embeddings = self.embed_questions(input_ids, attention_mask, token_type_ids)
        # [batch, num_blocks]
        relevance_score = torch.einsum("bd,bnd->bn", question_embeddings,
                                       block_embeddings.to(question_embeddings))
        reader_logits, starts, ends = self._read(reader_input_ids[:, :rows], reader_attention_mask,
                                                 reader_token_type_ids, block_mask[:, :rows],
                                                 relevance_score[:, :rows])
        # [batch] each
        block_idx, candidate, start_pos, end_pos = best_span(reader_logits, starts, ends)
        predicted = [reader_input_ids[b, block_idx[b], start_pos[b]:end_pos[b] + 1] for b in range(batch)]
        losses = {}
        if has_answers is not None and start_positions is not None and end_positions is not None:
            # [batch, rows, num_spans]
            reader_correct = gold_span_mask(starts, ends, start_positions[:, :rows].clamp(-1, seq_len),
                                            end_positions[:, :rows].clamp(-1, seq_len))
            retriever_loss, reader_loss = span_losses(relevance_score, has_answers, reader_logits, reader_correct)
            losses = dict(loss=(retriever_loss + reader_loss).mean(), retriever_loss=retriever_loss,
                          reader_loss=reader_loss)
        result = RealmForOpenQAOutput(
            **losses, relevance_score=relevance_score, reader_logits=reader_logits, block_idx=block_idx,
            block_ids=None if block_ids is None else block_ids.gather(1, block_idx[:, None]).squeeze(1),
            start_pos=start_pos, end_pos=end_pos, predicted_answer_ids=predicted)
        return result if self._resolve_return_dict(return_dict) else result.to_tuple()

    def _read(self, input_ids, attention_mask, token_type_ids, block_mask, relevance_score):
        """Reader over `[batch, rows, seq]` in one backbone pass -> logits `[batch, rows, num_spans]`, starts, ends."""
        batch, rows, seq_len = input_ids.shape

        def flat(tensor):
            # [batch, rows', seq] -> [batch * rows, seq]
            return None if tensor is None else tensor[:, :rows].reshape(batch * rows, seq_len)

        logits, starts, ends, _ = self.reader.score_spans(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                                                          flat(block_mask), relevance_score.reshape(-1))
        # [batch, rows, num_spans]
        return logits.view(batch, rows, -1), starts, ends
