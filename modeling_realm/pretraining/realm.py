"""REALM pretraining (Guu et al. 2020, section 3): masked queries, retrieval without the query's own document, the
null block, relevance scores with gradients to both towers, and the marginal masked-LM loss.

One training step, in the order the pieces are used:

1. `MaskedQueryCollator` masks query texts with `make_masked_batch` (salient spans by default): `[CLS] query [SEP]`.
2. `search_embeddings` embeds the masked queries with the current query tower, without gradients and in eval mode,
   only to search the index (FAISS never sees a tensor that needs gradients).
3. `retrieval.retrieve_blocks` keeps the top `k - 1` blocks of each query whose `doc_id` differs from the query's own
   document (REALM's "trivial retrieval" exclusion: the masked words are in the query's own text).
4. `candidate_inputs` tokenises the block-tower inputs (the null block, then every retrieved block, with
   `block_inputs` exactly as the index builder does) and the encoder inputs `[CLS] masked query [SEP] block [SEP]`
   `[batch, k, seq]`, candidate 0 being the null block (`[CLS] query [SEP] [SEP]`), the labels aligned with the
   query part.
5. `RealmPretrainingModel.forward` recomputes the relevance scores in torch, query tower (gradients) times the block
   tower (gradients) applied to the retrieved blocks' tokens now, so the masked-LM signal reaches both towers, and
   returns the marginal masked-LM loss (the loss of `RealmKnowledgeAugEncoder`, with the MLM head run on the masked
   positions only) and the retrieval utility.

The null block's score is `query . embed_block("")`: the block tower's embedding of an empty block (`[CLS] [SEP]`),
as in REALM's code, so it moves with the towers like any block (a learned or zero score would be a constant sink;
the empty-block embedding lets the retriever learn per query how much retrieval helps).

Retrieval utility (REALM section 5): RU = log p(y|z, x) - log p(y|null, x), with y all masked tokens of the query
(log-probabilities summed over them) and z the top retrieved block (candidate 1: the index's best block outside the
query's document). Positive RU: the block helped predict the masked words.
"""

import contextlib
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.utils import ModelOutput

from modeling_realm.models.losses import gathered_marginal_loss, masked_token_log_prob
from modeling_realm.models.pretrained import evaluation_mode, flatten_candidates, run_backbone
from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN, block_inputs
from tokenization.masking.masks import DEFAULT_QUERY_LENGTH, IGNORE_INDEX, MASKINGS, make_masked_batch

logger = logging.getLogger(__name__)

DEFAULT_NUM_CANDIDATES = 8  # REALM: top-k = 8 including the null block (ARCHITECTURE.md, the REALM recipe)
DEFAULT_ENCODER_LENGTH = 512  # [CLS] query (<= 96) [SEP] block (<= 288 wordpieces) [SEP] fits without truncation
NULL_BLOCK = {"block_id": -1, "doc_id": None, "title": "", "text": ""}
QUERY_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# ------------------------------------------------------------------------------------------------ queries
def query_examples(blocks, tokenizer, query_length: int = DEFAULT_QUERY_LENGTH, num_proc=None):
    """Cut texts into pretraining queries of at most `query_length` wordpieces (special tokens included).

    Args:
        blocks (`datasets.Dataset`): documents or blocks with `text` and `doc_id` (and optionally `title`), e.g. the
            blocks of a `BlockIndex` (`index.blocks`) or a corpus from `load_corpus`.
        tokenizer: a fast BERT WordPiece tokenizer.
        query_length (`int`): REALM's 96.
    Returns:
        `datasets.Dataset` with `block_id` (the query's number), `doc_id` (its document, for the trivial-retrieval
        exclusion), `title` and `text`: sentence-greedy pieces, as `split_into_blocks` cuts documents.
    """
    from tokenization.blocks import split_into_blocks

    if query_length < 3:
        raise ValueError(f"query_length must be >= 3 ([CLS] + a wordpiece + [SEP]), got {query_length}.")
    missing = [name for name in ("doc_id", "text") if name not in blocks.column_names]
    if missing:
        raise ValueError(f"The query source lacks the column(s) {missing} (it has {blocks.column_names}); queries "
                         "need their document's doc_id so that its blocks can be excluded from retrieval.")
    if "title" not in blocks.column_names:
        blocks = blocks.add_column("title", [""] * len(blocks))
    corpus = blocks.select_columns(["doc_id", "title", "text"])
    return split_into_blocks(corpus, tokenizer, max_block_length=query_length - 2, num_proc=num_proc)


class MaskedQueryCollator:
    """DataLoader `collate_fn`: query rows (`text`, `doc_id`, optional `block_id`, optional `salient_spans` cached by
    `add_salient_spans`) -> masked query tensors.

    The masking of a batch depends only on `(seed, epoch, the rows' block_ids or texts)`, so resumed runs, skipped
    batches and several processes draw the same masks. Returns `input_ids`, `attention_mask`, `token_type_ids`,
    `labels` `[batch, q_seq]` (cut to the longest row) and `doc_ids` (list of str).
    """

    def __init__(self, tokenizer, masking: str = "salient", query_length: int = DEFAULT_QUERY_LENGTH, seed: int = 0,
                 salient_backend: str = "auto", **masking_kwargs):
        if masking not in MASKINGS:
            raise ValueError(f"masking={masking!r} is not one of {MASKINGS}.")
        self.tokenizer, self.masking, self.query_length = tokenizer, masking, query_length
        self.seed, self.epoch, self.backend, self.masking_kwargs = seed, 0, salient_backend, masking_kwargs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, rows: list[dict]) -> dict:
        texts = [row["text"] for row in rows]
        spans = None
        if self.masking == "salient" and all("salient_spans" in row for row in rows):
            spans = [row["salient_spans"] for row in rows]
        batch = make_masked_batch(self.tokenizer, texts, masking=self.masking, rng=self._rng(rows),
                                  max_length=self.query_length, spans=spans, backend=self.backend,
                                  **self.masking_kwargs)
        width = int(batch["attention_mask"].sum(1).max())
        batch = {key: value[:, :width] for key, value in batch.items()}  # [batch, q_seq]
        batch["doc_ids"] = [None if row.get("doc_id") is None else str(row["doc_id"]) for row in rows]
        return batch

    def _rng(self, rows) -> np.random.Generator:
        keys = [int(row["block_id"]) if "block_id" in row else zlib.crc32(row["text"].encode()) for row in rows]
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, *keys]))


@torch.no_grad()
def search_embeddings(retriever, batch: dict, autocast=contextlib.nullcontext) -> np.ndarray:
    """Query embeddings `[batch, proj]` (float32 numpy) of masked queries, for the index search only."""
    device = next(retriever.parameters()).device
    with evaluation_mode(retriever), autocast():
        # [batch, proj]
        queries = retriever.embed_queries(*(batch[key].to(device) for key in QUERY_KEYS))
    return queries.float().cpu().numpy()


@torch.no_grad()
def embed_blocks_now(retriever, tokenizer, blocks: list[dict], max_length: int = DEFAULT_BLOCK_SEQ_LEN,
                     batch_size: int = 64, autocast=contextlib.nullcontext) -> torch.Tensor:
    """Embeddings `[len(blocks), proj]` (float32, on the retriever's device) of blocks (dicts with `title`, `text`)
    from the current block tower, without gradients, in eval mode (what a freshly built index would hold)."""
    device = next(retriever.parameters()).device
    parts = []
    with evaluation_mode(retriever), autocast():
        for start in range(0, len(blocks), batch_size):
            chunk = blocks[start:start + batch_size]
            inputs = block_inputs(tokenizer, [b.get("title") or "" for b in chunk], [b["text"] for b in chunk],
                                  max_length).to(device)
            # [chunk, proj]
            parts.append(retriever.embed_blocks(inputs["input_ids"], inputs["attention_mask"],
                                                inputs["token_type_ids"]).float())
    return torch.cat(parts) if parts else torch.empty(0, retriever.config.retriever_proj_size, device=device)


# ------------------------------------------------------------------------------------------------ inputs
def candidate_inputs(tokenizer, queries: dict, blocks: list[list[dict]], block_length: int = DEFAULT_BLOCK_SEQ_LEN,
                     max_length: int = DEFAULT_ENCODER_LENGTH) -> dict:
    """Model inputs for masked queries and their retrieved blocks (the null block is added here, first).

    Args:
        queries: `MaskedQueryCollator` output: `input_ids`, `attention_mask`, `token_type_ids`, `labels` `[b, q]`.
        blocks: per query, its `k - 1` retrieved blocks (dicts with `title` and `text`), the same count for each.
        block_length: block-tower input length (`block_inputs`, as the index builder).
        max_length: encoder input length; only the block is truncated to fit.
    Returns:
        a dict of `RealmPretrainingModel.forward` arguments: `query_*` `[b, q]`; `block_*` `[1 + b * (k - 1), s_b]`
        (row 0 the null block, then each query's blocks in order); `input_ids`, `attention_mask`, `token_type_ids`
        `[b, k, s]` = `[CLS] query [SEP] block [SEP]` (block 0 empty); `labels` `[b, s]` (-100 off the masked query
        positions) and `mlm_mask` `[b, s]` (true on the masked positions).
    """
    batch = queries["input_ids"].shape[0]
    counts = {len(row) for row in blocks}
    if len(blocks) != batch or len(counts) != 1 or 0 in counts:
        raise ValueError(f"Need the same number (>= 1) of retrieved blocks for each of the {batch} queries; got "
                         f"{[len(row) for row in blocks]}.")
    flat = [block for row in blocks for block in row]
    tower = block_inputs(tokenizer, [""] + [b.get("title") or "" for b in flat], [""] + [b["text"] for b in flat],
                         block_length)
    joint = _joint_inputs(tokenizer, queries, flat, max_length)
    inputs = {f"query_{key}": queries[key] for key in QUERY_KEYS}
    inputs.update({f"block_{key}": tower[key] for key in QUERY_KEYS})
    inputs.update(joint)
    return inputs


def _joint_inputs(tokenizer, queries: dict, flat_blocks: list[dict], max_length: int) -> dict:
    """`[CLS] query [SEP] block [SEP]` rows `[b, k, s]`, query first so its positions (and labels) are unchanged."""
    batch, width = queries["input_ids"].shape
    per_query = len(flat_blocks) // batch + 1  # k, with the null block
    lengths = queries["attention_mask"].sum(1).tolist()
    if max(lengths) + 1 > max_length:
        raise ValueError(f"Queries of {max(lengths)} wordpieces leave no room in encoder inputs of {max_length}; "
                         "raise the encoder max length or lower the query length.")
    pieces = tokenizer([b["text"] for b in flat_blocks], add_special_tokens=False)["input_ids"]
    rows, query_lengths = [], []
    for i in range(batch):
        query = queries["input_ids"][i, :lengths[i]].tolist()  # [CLS] masked query [SEP]
        for piece in [[]] + pieces[i * (per_query - 1):(i + 1) * (per_query - 1)]:
            rows.append(query + piece[:max_length - len(query) - 1] + [tokenizer.sep_token_id])
            query_lengths.append(len(query))
    seq = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), seq), tokenizer.pad_token_id, dtype=torch.long)  # [b * k, s]
    attention_mask = torch.zeros((len(rows), seq), dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), seq), dtype=torch.long)
    for r, (row, query_length) in enumerate(zip(rows, query_lengths)):
        input_ids[r, :len(row)] = torch.tensor(row)
        attention_mask[r, :len(row)] = 1
        token_type_ids[r, query_length:len(row)] = 1
    labels = torch.full((batch, seq), IGNORE_INDEX, dtype=torch.long)  # [b, s]
    common = min(seq, width)
    labels[:, :common] = queries["labels"][:, :common]
    shape = (batch, per_query, seq)
    return {"input_ids": input_ids.view(shape), "attention_mask": attention_mask.view(shape),
            "token_type_ids": token_type_ids.view(shape), "labels": labels, "mlm_mask": labels != IGNORE_INDEX}


def pretraining_inputs(retriever, tokenizer, batch: dict, retrieve, num_candidates: int = DEFAULT_NUM_CANDIDATES,
                       block_length: int = DEFAULT_BLOCK_SEQ_LEN, max_length: int = DEFAULT_ENCODER_LENGTH,
                       autocast=contextlib.nullcontext):
    """Steps 2-4 of the module docstring for one batch of masked queries.

    Args:
        retriever: the (unwrapped) `RealmRetriever` being trained.
        retrieve: `retrieve(query_embeddings [b, d] numpy, num_blocks, doc_ids) -> RetrievedBlocks`, e.g.
            `functools.partial(retrieve_blocks, index)` or `IndexRefresher.retrieve`.
        num_candidates: k, the null block included (>= 2).
    Returns:
        `(inputs, retrieved)`: the `candidate_inputs` dict (CPU tensors) and the `RetrievedBlocks`.
    """
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2 (the null block and at least one retrieved block), got "
                         f"{num_candidates}.")
    queries = search_embeddings(retriever, batch, autocast)
    retrieved = retrieve(queries, num_candidates - 1, batch.get("doc_ids"))
    return candidate_inputs(tokenizer, batch, retrieved.blocks, block_length, max_length), retrieved


# ------------------------------------------------------------------------------------------------ model
@dataclass
class RealmPretrainingOutput(ModelOutput):
    """Output of `RealmPretrainingModel`.

    Args:
        loss (`torch.FloatTensor`, scalar): marginal masked-LM loss, averaged over the masked tokens.
        relevance_score (`torch.FloatTensor` `[batch, k]`): query . block scores, candidate 0 the null block.
        candidate_log_likelihood (`torch.FloatTensor` `[batch, k]`, detached): log p(y|z_k, x) summed over the
            masked tokens of each query.
        retrieval_utility (`torch.FloatTensor` `[batch]`, detached): log p(y|z_1, x) - log p(y|null, x).
    """

    loss: torch.FloatTensor | None = None
    relevance_score: torch.FloatTensor | None = None
    candidate_log_likelihood: torch.FloatTensor | None = None
    retrieval_utility: torch.FloatTensor | None = None


class RealmPretrainingModel(nn.Module):
    """The modules REALM pretraining trains, as one module for `accelerator.prepare`: `retriever`
    (`RealmRetriever`: query and block towers) and `encoder` (`RealmKnowledgeAugEncoder`).

    Save them separately with `model.retriever.save_pretrained(...)` and `model.encoder.save_pretrained(...)`.
    """

    def __init__(self, retriever, encoder):
        super().__init__()
        if retriever.config.vocab_size != encoder.config.vocab_size:
            raise ValueError(f"The retriever's vocabulary has {retriever.config.vocab_size} entries and the encoder's "
                             f"{encoder.config.vocab_size}; both read the same tokens, so use one tokenizer's models.")
        self.retriever, self.encoder = retriever, encoder

    def forward(self, query_input_ids, query_attention_mask, query_token_type_ids, block_input_ids,
                block_attention_mask, block_token_type_ids, input_ids, attention_mask, token_type_ids, labels,
                mlm_mask=None) -> RealmPretrainingOutput:
        """Arguments as `candidate_inputs` returns them (shapes there); returns `RealmPretrainingOutput`."""
        batch, num_candidates, _ = input_ids.shape
        if block_input_ids.shape[0] != 1 + batch * (num_candidates - 1):
            raise ValueError(f"Expected 1 + {batch} x {num_candidates - 1} block-tower rows (the null block, then "
                             f"each query's blocks), got {block_input_ids.shape[0]}; build inputs with "
                             "candidate_inputs.")
        relevance_score = self.relevance(query_input_ids, query_attention_mask, query_token_type_ids,
                                         block_input_ids, block_attention_mask, block_token_type_ids, num_candidates)
        mlm_mask = labels != IGNORE_INDEX if mlm_mask is None else mlm_mask
        # The MLM head runs only where a position has weight (the masked tokens, a few per query), never over the
        # whole query: [batch, k, seq, vocab] logits were most of a step's time and memory.
        rows, positions = mlm_mask.nonzero(as_tuple=True)
        # [batch * k, seq]
        flat = flatten_candidates(input_ids, attention_mask, token_type_ids)
        # [batch, k, seq, hidden]
        hidden = run_backbone(self.encoder.realm, *flat).last_hidden_state.view(batch, num_candidates, -1,
                                                                                  self.encoder.config.hidden_size)
        # [masked, k, vocab]: advanced indices on dims 0 and 2 put the masked positions first
        logits = self.encoder.cls(hidden[rows, :, positions])
        # [masked, k]
        token_log_prob = masked_token_log_prob(logits, labels[rows, positions])
        weights = mlm_mask[rows, positions].to(torch.float32)
        loss = gathered_marginal_loss(token_log_prob, relevance_score.log_softmax(-1)[rows], weights)
        # [batch, k]: log p(y|z, x) summed over each query's masked positions
        likelihood = torch.zeros_like(relevance_score, dtype=torch.float32).index_add(
            0, rows, token_log_prob.detach() * weights.unsqueeze(-1))
        return RealmPretrainingOutput(loss=loss, relevance_score=relevance_score,
                                      candidate_log_likelihood=likelihood,
                                      retrieval_utility=likelihood[:, 1] - likelihood[:, 0])

    def relevance(self, query_input_ids, query_attention_mask, query_token_type_ids, block_input_ids,
                  block_attention_mask, block_token_type_ids, num_candidates: int) -> torch.Tensor:
        """Scores `[batch, k]` with gradients to both towers; column 0 scores the null block (block row 0)."""
        # [batch, proj]
        queries = self.retriever.embed_queries(query_input_ids, query_attention_mask, query_token_type_ids)
        # [1 + batch * (k - 1), proj]
        blocks = self.retriever.embed_blocks(block_input_ids, block_attention_mask, block_token_type_ids)
        # [batch, 1]
        null_score = queries @ blocks[0].unsqueeze(-1)
        # [batch, k - 1, proj]
        retrieved = blocks[1:].view(queries.shape[0], num_candidates - 1, -1)
        # [batch, k - 1]
        retrieved_score = torch.einsum("bd,bkd->bk", queries, retrieved)
        return torch.cat([null_score, retrieved_score], dim=1)


def freeze_unused_parameters(model: RealmPretrainingModel) -> list[str]:
    """Stop gradients to the parameters pretraining never uses, so data-parallel training needs no unused-parameter
    search: the MLM heads the embedders keep for checkpoint compatibility, the encoder's pooler, and the retriever's
    poolers when it pools by mean (`retriever_pooling="mean"`). Returns their names."""
    frozen = []
    mean_pooled = model.retriever.config.retriever_pooling == "mean"
    for name, param in model.named_parameters():
        unused_pooler = name.startswith("encoder.realm.pooler.") or (
            mean_pooled and name.startswith("retriever.") and ".realm.pooler." in name)
        if (name.startswith("retriever.") and ".cls.predictions." in name) or unused_pooler:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
