"""Inverse Cloze Task (ICT; Lee et al. 2019, ORQA), the warm start of REALM's retriever.

A sentence of a block is the pseudo-query; its block, with that sentence removed (kept in with probability
`keep_prob`, 0.1 in ORQA, so the retriever also learns that word overlap matters), is the target; every other block of
the (global) batch is a negative. The loss is the cross-entropy of the query-block inner products over all blocks:
`models.losses.in_batch_loss`, which under several processes gathers the block embeddings of every process
(`gather_with_grad`), so the negatives come from the whole global batch and gradients reach each process's own block
tower exactly as a single process with the global batch would compute them (after data-parallel gradient
averaging).
"""

import logging
import random
from collections.abc import Mapping, Sequence

from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN, block_inputs
from tokenization.sentences import sentence_spans

logger = logging.getLogger(__name__)

DEFAULT_KEEP_PROB = 0.1  # ORQA/REALM: the query sentence is removed from its block 90% of the time
ICT_QUERY_LENGTH = 64  # ORQA's ICT query length (REALM's MLM queries are 96 wordpieces; an ICT query is 1 sentence)


def can_make_ict_example(text: str) -> bool:
    """Whether a block's text has the two sentences ICT needs (one for the query, at least one left as context)."""
    return len(sentence_spans(text)) >= 2


def ict_examples(blocks_batch, rng: random.Random, keep_prob: float = DEFAULT_KEEP_PROB):
    """Pseudo-queries and their target blocks.

    Args:
        blocks_batch: blocks as a list of dicts or as columns (a dict of lists, e.g. a `datasets` batch), with `text`
            and optionally `title`.
        rng (`random.Random`): the only source of randomness (two draws per usable block, in order).
        keep_prob (`float`): probability that the query sentence is left in its block.

    Returns:
        `(queries, targets)`: `queries[i]` (`str`) is one sentence of a block, `targets[i]` the `(title, text)` of that
        block, with the sentence cut out unless kept. Blocks with fewer than two sentences give no example (filter
        them out beforehand with `can_make_ict_example` to keep batch sizes fixed).
    """
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must lie in [0, 1], got {keep_prob!r}; ORQA's value is {DEFAULT_KEEP_PROB}.")
    queries, targets, skipped = [], [], 0
    for title, text in _titles_and_texts(blocks_batch):
        spans = sentence_spans(text)
        if len(spans) < 2:
            skipped += 1
            continue
        start, end = spans[rng.randrange(len(spans))]
        keep = rng.random() < keep_prob
        queries.append(text[start:end])
        targets.append((title, text if keep else remove_span(text, start, end)))
    if skipped:
        logger.debug("ICT: %d of %d blocks have fewer than two sentences and give no example.", skipped,
                     skipped + len(queries))
    return queries, targets


def remove_span(text: str, start: int, end: int) -> str:
    """`text` without `text[start:end]`, the two sides joined by one space (or the line break that separated them)."""
    before, after = text[:start].rstrip(), text[end:].lstrip()
    if not before or not after:
        return before or after
    gap = text[len(before):start] + text[end:len(text) - len(after)]
    return before + ("\n" if "\n" in gap else " ") + after


def _titles_and_texts(blocks_batch):
    if isinstance(blocks_batch, Mapping):
        if "text" not in blocks_batch:
            raise ValueError(f"blocks_batch has no 'text' column (columns: {sorted(blocks_batch)}); pass blocks with "
                             "'text' and optionally 'title'.")
        texts = list(blocks_batch["text"])
        titles = list(blocks_batch.get("title") or [""] * len(texts))
        return [(title or "", text) for title, text in zip(titles, texts)]
    if not isinstance(blocks_batch, Sequence):
        raise TypeError("blocks_batch must be a list of dicts or a dict of columns, got "
                        f"{type(blocks_batch).__name__}.")
    rows = []
    for number, row in enumerate(blocks_batch):
        if not isinstance(row, Mapping) or "text" not in row:
            raise ValueError(f"block {number} of the batch is not a dict with a 'text' field: {row!r:.80}.")
        rows.append((row.get("title") or "", row["text"]))
    return rows


class IctCollator:
    """DataLoader `collate_fn`: block rows -> tokenised ICT queries and targets, ready for `RealmRetriever.forward`.

    The draws of a batch depend only on `(seed, epoch, the batch's block_ids)` (or texts, for rows without
    `block_id`), not on earlier batches, so skipping batches on resume, data-loader workers and several processes all
    see the same examples. Call `set_epoch` at the start of every epoch for fresh draws.

    Returns a dict of `[batch, q_seq]` query tensors (`input_ids`, `attention_mask`, `token_type_ids`) and
    `[batch, b_seq]` target tensors (`block_input_ids`, `block_attention_mask`, `block_token_type_ids`); targets are
    tokenised with `block_inputs`, as the index builder tokenises blocks.
    """

    def __init__(self, tokenizer, query_length: int = ICT_QUERY_LENGTH, block_length: int = DEFAULT_BLOCK_SEQ_LEN,
                 keep_prob: float = DEFAULT_KEEP_PROB, seed: int = 0):
        for name, value in (("query_length", query_length), ("block_length", block_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 4:
                raise ValueError(f"{name} must be an int >= 4 (room for [CLS], [SEP] and text), got {value!r}.")
        if not 0.0 <= keep_prob <= 1.0:
            raise ValueError(f"keep_prob must lie in [0, 1], got {keep_prob!r}; ORQA's value is {DEFAULT_KEEP_PROB}.")
        self.tokenizer, self.query_length, self.block_length = tokenizer, query_length, block_length
        self.keep_prob, self.seed, self.epoch = keep_prob, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, rows: list[dict]) -> dict:
        queries, targets = ict_examples(rows, self._rng(rows), self.keep_prob)
        if not queries:
            raise ValueError("No block of this batch has two sentences, so ICT has no query; drop such blocks first "
                             "(dataset.filter(can_make_ict_example, input_columns='text')).")
        # [batch, q_seq]
        query = self.tokenizer(queries, truncation=True, max_length=self.query_length, padding="longest",
                               return_token_type_ids=True, return_tensors="pt")
        # [batch, b_seq]
        block = block_inputs(self.tokenizer, [t for t, _ in targets], [x for _, x in targets], self.block_length)
        batch = {key: query[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
        batch.update({f"block_{key}": block[key] for key in ("input_ids", "attention_mask", "token_type_ids")})
        return batch

    def _rng(self, rows) -> random.Random:
        keys = [str(row["block_id"]) if "block_id" in row else row.get("text", "") for row in rows]
        return random.Random("\x1f".join([str(self.seed), str(self.epoch), *keys]))


# ------------------------------------------------------------------------------------------------ towers
def with_separate_towers(retriever):
    """ORQA's setup: a query tower and a block tower that start as copies of the same weights.

    Returns `retriever` unchanged when its towers are already separate; otherwise a new `RealmRetriever` whose block
    tower and (new) query tower both hold the shared tower's weights, with `config.separate_query_embedder=True`.
    """
    import copy

    from modeling_realm.models.retriever import RealmRetriever

    if retriever.config.separate_query_embedder:
        return retriever
    config = copy.deepcopy(retriever.config)
    config.separate_query_embedder = True
    separate = RealmRetriever(config)
    state = retriever.embedder.state_dict()
    separate.embedder.load_state_dict(state)
    separate.query_embedder.load_state_dict(state)
    return separate.to(next(retriever.parameters()).device)


def freeze_unused_heads(retriever) -> list[str]:
    """Stop gradients to the MLM heads (`cls.predictions.*`) the embedders keep for checkpoint compatibility but never
    use for retrieval, and to their poolers when they pool by mean (`retriever_pooling="mean"`), so data-parallel
    training needs no unused-parameter search. Returns the frozen names."""
    frozen = []
    mean_pooled = retriever.config.retriever_pooling == "mean"
    for name, param in retriever.named_parameters():
        if ".cls.predictions." in f".{name}" or (mean_pooled and ".realm.pooler." in f".{name}"):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
