"""Supervised training pairs for a retriever's two towers (as DPR): a question, its positive block, a hard negative.

`mine_retriever_pairs` searches an index with the retriever's own question tower and keeps, per question:
- the positive: the best-ranked retrieved block of the question's gold passage (`gold_doc_id`, when the record names
  one), else the best-ranked retrieved block that holds an answer (`match` as in fine-tuning);
- the hard negative: the best-ranked retrieved block that is not of the gold passage and holds no answer (None if
  every retrieved block does).
Questions whose retrieved blocks include no positive are left out (counted in the returned statistics).
`RetrieverPairCollator` turns pairs into the inputs `RealmRetriever.forward` takes, blocks tokenised as the index
builder tokenises them; the loss is `in_batch_loss`, the positives first and the hard negatives after them.
"""

import logging

import torch
from tqdm.auto import tqdm

from modeling_realm.openqa.answering import tokenize_questions
from modeling_realm.openqa.batches import blocks_with_answer
from modeling_realm.retrieval import check_index
from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN, block_inputs
from tokenization.offsets import with_offsets

logger = logging.getLogger(__name__)

DEFAULT_MINING_BLOCKS = 32  # ORQA's searcher beam: where positives and hard negatives are looked for


@torch.no_grad()
def mine_retriever_pairs(retriever, tokenizer, index, records: list[dict], num_blocks: int = DEFAULT_MINING_BLOCKS,
                         match: str = "string", batch_size: int = 64, progress: bool = True):
    """Pairs `{"question", "positive", "negative"}` (block ids; negative None when there is none) and statistics.

    Args:
        retriever: a `RealmRetriever` (or any model with `embed_queries` and a `config`) whose block tower built
            `index`.
        records: QA records `{"question", "answers", optional "gold_doc_id"}` (`load_qa_file`, `load_qa`).
    Returns:
        `(pairs, stats)`; stats counts `questions`, `pairs`, `no_positive` and `no_negative`.
    """
    if match not in ("string", "regex"):
        raise ValueError(f"match must be 'string' or 'regex', got {match!r}.")
    check_index(index, retriever.config.retriever_proj_size)
    tokenizer = with_offsets(tokenizer)
    k = min(num_blocks, len(index))
    was_training = retriever.training
    retriever.eval()
    pairs, stats = [], {"questions": len(records), "pairs": 0, "no_positive": 0, "no_negative": 0}
    for start in tqdm(range(0, len(records), batch_size), desc="Mining positives and hard negatives",
                      disable=not progress):
        batch = records[start:start + batch_size]
        inputs = tokenize_questions(tokenizer, [r["question"] for r in batch], retriever.config, retriever.device)
        # [batch, proj]
        queries = retriever.embed_queries(**inputs)
        _, block_ids = index.search(queries.float().cpu().numpy(), k)
        for record, ids, blocks in zip(batch, block_ids, index.get_blocks(block_ids), strict=True):
            pair = _pair(tokenizer, record, ids.tolist(), blocks, match)
            if pair is None:
                stats["no_positive"] += 1
                continue
            stats["no_negative"] += pair["negative"] is None
            pairs.append(pair)
    retriever.train(was_training)
    stats["pairs"] = len(pairs)
    logger.info("Retriever pairs: %d of %d questions have a positive among their %d retrieved blocks (%d without a "
                "hard negative)", stats["pairs"], stats["questions"], k, stats["no_negative"])
    return pairs, stats


def _pair(tokenizer, record: dict, ids: list[int], blocks: list[dict], match: str) -> dict | None:
    """The question's pair from its retrieved blocks (best first), or None without a positive."""
    # [k] bool
    holds = blocks_with_answer(tokenizer, [block["text"] for block in blocks], record["answers"], match).tolist()
    gold = record.get("gold_doc_id")
    if gold is not None:
        is_positive = [str(block["doc_id"]) == str(gold) for block in blocks]
        is_negative = [not positive and not has for positive, has in zip(is_positive, holds, strict=True)]
    else:
        is_positive, is_negative = holds, [not has for has in holds]
    if not any(is_positive):
        return None
    negative = next((i for i, flag in zip(ids, is_negative, strict=True) if flag), None)
    return {"question": record["question"], "positive": ids[is_positive.index(True)], "negative": negative}


class RetrieverPairCollator:
    """DataLoader `collate_fn`: pairs -> `[batch, q_seq]` question inputs and `[blocks, b_seq]` block inputs.

    The blocks are the batch's positives in order (question i's is block i), then its hard negatives, as
    `in_batch_loss` expects; `hard_negatives=False` leaves the negatives out (in-batch negatives only).
    """

    def __init__(self, tokenizer, index, query_length: int, block_length: int = DEFAULT_BLOCK_SEQ_LEN,
                 hard_negatives: bool = True):
        self.tokenizer, self.index = tokenizer, index
        self.query_length, self.block_length, self.hard_negatives = query_length, block_length, hard_negatives

    def set_epoch(self, epoch: int) -> None:
        """Nothing to redraw (a pair's blocks are fixed when mined); kept so training loops treat collators alike."""

    def __call__(self, pairs: list[dict]) -> dict:
        ids = [pair["positive"] for pair in pairs]
        if self.hard_negatives:
            ids += [pair["negative"] for pair in pairs if pair["negative"] is not None]
        blocks = self.index.get_blocks(ids)
        # [batch, q_seq]
        query = self.tokenizer([pair["question"] for pair in pairs], truncation=True, max_length=self.query_length,
                               padding="longest", return_token_type_ids=True, return_tensors="pt")
        # [blocks, b_seq]
        block = block_inputs(self.tokenizer, [b["title"] or "" for b in blocks], [b["text"] for b in blocks],
                             self.block_length)
        batch = {key: query[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
        batch.update({f"block_{key}": block[key] for key in ("input_ids", "attention_mask", "token_type_ids")})
        return batch
