"""Open-domain QA metrics: answer exact match / F1, retriever answer recall@k, and gold-block recall@k.

Every score is a percentage in [0, 100]. The `evaluate` metric module `evaluate_metric/open_qa_exact_match.py` (next
to this file, path in `OPEN_QA_METRIC_PATH`) computes `evaluate_predictions` through
`evaluate.load(OPEN_QA_METRIC_PATH)`.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from modeling_realm.openqa.answers import MATCH_TYPES, exact_match, f1_score, has_answer, regex_match

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 20, 100)
OPEN_QA_METRIC_PATH = str(Path(__file__).resolve().parent / "evaluate_metric" / "open_qa_exact_match.py")


def evaluate_predictions(predictions: Sequence[str], references: Sequence, match: str = "string") -> dict:
    """Score predicted answers against reference answers.

    Args:
        predictions (list of `str`): one predicted answer per question.
        references (list of lists of `str`): the reference answers of each question (a single string is accepted
            for a question with one answer); regular expressions when `match="regex"` (CuratedTREC).
        match (`str`): "string" for SQuAD exact match and token F1; "regex" for CuratedTREC's regex match
            (`answers.regex_match`), which has no F1.

    Returns:
        `{"exact_match": %, "f1": %, "count": n}`; with match="regex", `{"exact_match": %, "count": n}`.
    """
    _check_match(match)
    _check_lengths(predictions, references, "predictions", "references")
    if match == "regex":
        hits = [regex_match(_as_str(p), answers) for p, answers in zip(predictions, references)]
        return {"exact_match": _percent(hits), "count": len(hits)}
    hits = [exact_match(_as_str(p), answers) for p, answers in zip(predictions, references)]
    f1 = [f1_score(_as_str(p), answers) for p, answers in zip(predictions, references)]
    return {"exact_match": _percent(hits), "f1": _percent(f1), "count": len(hits)}


def retrieval_recall(retrieved_texts_per_question: Sequence[Sequence[str]], answers_per_question: Sequence,
                     ks: Sequence[int] = DEFAULT_KS, match: str = "string", tokenizer=None,
                     progress: bool = True) -> dict:
    """Answer recall@k of a retriever: the share of questions with an answer in one of their top k blocks.

    Args:
        retrieved_texts_per_question: for each question, its retrieved block texts, best first.
        answers_per_question: for each question, its answers (regular expressions when `match="regex"`).
        ks: the cut-offs. A k above the most blocks retrieved for any question is left out, with a warning.
        match, tokenizer: how a block is checked for an answer, as in `answers.has_answer`.
        progress (`bool`): show a tqdm bar over questions.

    Returns:
        `{"recall@1": %, "recall@5": %, ...}` for the kept ks in increasing order.
    """
    _check_match(match)
    _check_lengths(retrieved_texts_per_question, answers_per_question, "retrieved_texts_per_question",
                   "answers_per_question")
    ks = _usable_ks(ks, retrieved_texts_per_question)
    ranks = []
    pairs = zip(retrieved_texts_per_question, answers_per_question)
    for texts, answers in tqdm(pairs, total=len(answers_per_question), desc="answer recall", disable=not progress):
        hit = (rank for rank, text in enumerate(list(texts)[:ks[-1]]) if has_answer(text, answers, match, tokenizer))
        ranks.append(next(hit, None))
    return _recall_at(ranks, ks)


def gold_block_recall(retrieved_doc_ids: Sequence[Sequence], gold_doc_ids: Sequence, ks: Sequence[int] = DEFAULT_KS
                      ) -> dict:
    """Gold recall@k: the share of questions whose gold document is among their top k retrieved ones.

    Args:
        retrieved_doc_ids: for each question, the doc ids of its retrieved blocks, best first (a numpy row works;
            map block_ids to doc_ids first when documents were split into several blocks).
        gold_doc_ids: for each question, its gold doc id, or a collection of them (any one counts).
        ks: the cut-offs; a k above the most ids retrieved for any question is left out, with a warning.

    Ids are compared as strings, so the integer 3 and the corpus doc_id "3" are the same document.

    Returns:
        `{"recall@1": %, ...}` for the kept ks in increasing order.
    """
    _check_lengths(retrieved_doc_ids, gold_doc_ids, "retrieved_doc_ids", "gold_doc_ids")
    retrieved = [_id_list(row) for row in retrieved_doc_ids]
    ks = _usable_ks(ks, retrieved)
    ranks = []
    for number, (row, gold) in enumerate(zip(retrieved, gold_doc_ids)):
        gold = _gold_set(gold, number)
        ranks.append(next((rank for rank, doc_id in enumerate(row[:ks[-1]]) if doc_id in gold), None))
    return _recall_at(ranks, ks)


def _recall_at(ranks: list, ks: list[int]) -> dict:
    """Recall@k in percent from the 0-based rank of each question's first hit (None: no hit)."""
    return {f"recall@{k}": _percent([rank is not None and rank < k for rank in ranks]) for k in ks}


def _usable_ks(ks, retrieved) -> list[int]:
    if isinstance(ks, int) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers such as (1, 5, 20, 100), got {ks!r}.")
    most = max((len(row) for row in retrieved), default=0)
    kept = sorted({k for k in ks if k <= most})
    dropped = sorted({k for k in ks if k > most})
    if dropped:
        logger.warning("recall@%s left out: at most %d blocks were retrieved per question.", dropped, most)
    if not kept:
        raise ValueError(f"No k in {sorted(set(ks))} is reachable: at most {most} blocks were retrieved per question. "
                         "Retrieve more blocks or pass smaller ks.")
    return kept


def _id_list(row) -> list[str]:
    row = row.tolist() if hasattr(row, "tolist") else row
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
        raise TypeError(f"each question's retrieved doc ids must be a list, got {type(row).__name__} ({row!r}).")
    return [str(doc_id) for doc_id in row]


def _gold_set(gold, number: int) -> set[str]:
    gold = gold.tolist() if hasattr(gold, "tolist") else gold
    if gold is None:
        raise ValueError(f"Question {number} has no gold doc id; drop questions without one before scoring.")
    if isinstance(gold, (str, int)):
        return {str(gold)}
    gold = {str(doc_id) for doc_id in gold}
    if not gold:
        raise ValueError(f"Question {number} has an empty list of gold doc ids; drop it before scoring.")
    return gold


def _percent(values: list) -> float:
    return 100.0 * sum(float(v) for v in values) / len(values)


def _as_str(prediction) -> str:
    if not isinstance(prediction, str):
        raise TypeError(f"predictions must be strings, got {type(prediction).__name__} ({prediction!r}); use '' for "
                        "a question without a prediction.")
    return prediction


def _check_match(match: str):
    if match not in MATCH_TYPES:
        raise ValueError(f"match must be one of {MATCH_TYPES}, got {match!r}; use 'regex' for CuratedTREC.")


def _check_lengths(first, second, first_name: str, second_name: str):
    if len(first) != len(second):
        raise ValueError(f"{first_name} has {len(first)} entries but {second_name} has {len(second)}; give one per "
                         "question, in the same order.")
    if len(first) == 0:
        raise ValueError(f"{first_name} is empty; there is nothing to score.")
