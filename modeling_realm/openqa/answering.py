"""Index-backed open-domain QA for `RealmForOpenQA`: questions -> retrieved blocks -> answer spans with evidence.

The index is a `retrieval.RetrievalIndex`, such as `index_builder.BlockIndex`; retrieval goes through
`retrieval.retrieve_blocks`, as in fine-tuning and pretraining.
"""

import logging
import threading

import torch

from modeling_realm.models.pretrained import evaluation_mode
from modeling_realm.models.reader import RealmReader
from modeling_realm.models.spans import ranked_spans
from modeling_realm.retrieval import RetrievedBlocks, check_index, check_mode, retrieve_blocks
from tokenization.offsets import with_offsets
from tokenization.reader_inputs import ReaderBatch, reader_inputs
from tokenization.sentences import is_blank

# A fast tokenizer keeps its truncation and padding settings as state that each call rewrites, so two threads
# tokenizing with different settings (questions vs. question + block) can encode with each other's. Answering
# tokenizes under this lock, which makes answer() and the pipeline safe to call from several threads at once.
TOKENIZER_LOCK = threading.Lock()
# Reader rows (question-block pairs) per backbone pass when answering on CPU; see read_in_passes. BERT-base, 320
# tokens, 2 cores: 5 rows a pass 134 ms/row with an int8 reader, 10 rows 157, 20 rows 179, 40 rows 235 (fp32: flat).
READER_ROWS_PER_PASS = 8
logger = logging.getLogger(__name__)


def tokenize_questions(tokenizer, questions: list[str], config, device):
    """Question tower inputs, truncated to `searcher_seq_len` tokens (and never past the position embeddings)."""
    max_length = min(config.searcher_seq_len, config.max_position_embeddings)
    if not questions or any(not isinstance(q, str) or is_blank(q) for q in questions):
        raise ValueError("Every question must be a non-empty string; got "
                         f"{[q for q in questions if not isinstance(q, str) or is_blank(q)][:3]!r}.")
    with TOKENIZER_LOCK:
        encoding = tokenizer(questions, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    full = encoding["attention_mask"].sum(1) == max_length  # [batch]: may have been cut
    if full.any():
        with TOKENIZER_LOCK:
            lengths = [len(ids) for ids in tokenizer([q for q, f in zip(questions, full.tolist(), strict=True) if f])
                       ["input_ids"]]
        if max(lengths) > max_length:
            logger.warning("A question has %d tokens; the question tower reads its first %d (searcher_seq_len, "
                           "capped by max_position_embeddings): the question is truncated.", max(lengths), max_length)
    return {name: tensor.to(device) for name, tensor in encoding.items()
            if name in ("input_ids", "attention_mask", "token_type_ids")}


def reader_blocks(model, question_embeddings: torch.Tensor, k: int, questions: list[str] | None = None,
                  retrieval: str | None = None) -> RetrievedBlocks:
    """Top-k blocks of the model's index (k capped at its size) for `[batch, dim]` question embeddings, with their
    stored embeddings `[batch, k, dim]`. With the questions' texts an index with a lexical part retrieves in
    `retrieval` mode (None: its default, hybrid); the reader's relevance scores stay the dense ones."""
    return retrieve_blocks(model.index, question_embeddings, min(k, len(model.index)), with_embeddings=True,
                           query_texts=questions, mode=retrieval)


def answer_questions(model, tokenizer, questions: list[str], top_k: int = 1, batch_size: int = 8,
                     retrieval: str | None = None, max_answer_len: int | None = None) -> list[list[dict]]:
    """Per question, its `top_k` answers from the model's index, `batch_size` questions per forward pass; with
    `max_answer_len`, only answers of at most that many tokens."""
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}.")
    check_index(model.index, model.config.retriever_proj_size)
    check_mode(model.index, retrieval)
    tokenizer = with_offsets(tokenizer)  # a slow tokenizer: its fast twin, so every id comes from one tokenizer
    results = []
    with evaluation_mode(model):  # answers never depend on dropout, even right after training
        for start in range(0, len(questions), batch_size):
            results.extend(answer_batch(model, tokenizer, questions[start:start + batch_size], top_k, retrieval,
                                        max_answer_len))
    return results


@torch.no_grad()
def read_context(model, tokenizer, question: str, context: str, top_k: int = 1,
                 max_answer_len: int | None = None) -> list[dict]:
    """Answer `question` from a given context, without retrieval: the reader scores spans over windows of the
    context (`reader_seq_len` tokens, overlapping by a quarter) with zero retrieval score. `model` is a
    `RealmForOpenQA` or a `RealmReader` (`span_reader`); `max_answer_len` as in `answer_questions`."""
    if not isinstance(context, str) or is_blank(context):
        raise ValueError("context must be a non-empty string (or leave it out to retrieve from the index).")
    tokenizer = with_offsets(tokenizer)  # a slow tokenizer: its fast twin, so every id comes from one tokenizer
    tokenize_questions(tokenizer, [question], model.config, model.device)  # validates question
    length = model.config.reader_seq_len
    question = shortened_question(tokenizer, question, length)
    with TOKENIZER_LOCK:
        encoding = tokenizer(question, context, truncation="only_second", max_length=length, stride=length // 4,
                             return_overflowing_tokens=True, return_offsets_mapping=True, padding=True,
                             return_special_tokens_mask=True, return_tensors="pt")
    # [windows, seq]
    block_mask = ~encoding["special_tokens_mask"].bool() & encoding["token_type_ids"].bool()
    offsets = torch.where(block_mask.unsqueeze(-1), encoding["offset_mapping"],
                          torch.full_like(encoding["offset_mapping"], -1))
    batch = ReaderBatch(encoding["input_ids"][None], encoding["attention_mask"][None],
                        encoding["token_type_ids"][None], block_mask[None], offsets[None]).to(model.device)
    windows = batch.input_ids.shape[1]
    with evaluation_mode(model):
        # [windows, num_spans]
        logits, starts, ends, _ = span_reader(model).score_spans(
            batch.input_ids[0], batch.attention_mask[0], batch.token_type_ids[0], batch.block_mask[0],
            torch.zeros(windows, device=model.device))
    window = {"block_id": None, "doc_id": None, "title": "", "text": context}
    return _top_spans(logits, starts, ends, batch, 0, [window] * windows, top_k, max_answer_len)


def span_reader(model) -> RealmReader:
    """The module that scores answer spans: a `RealmReader` itself, or the reader of a `RealmForOpenQA`."""
    return model if isinstance(model, RealmReader) else model.reader


def shortened_question(tokenizer, question: str, length: int) -> str:
    """`question`, cut at a token boundary so that it fills at most half of a `length`-token reader window (the rest
    holds the context; a question longer than the window could not be read with any of it)."""
    budget = max(1, length // 2 - 2)  # [CLS] question [SEP] context [SEP]
    with TOKENIZER_LOCK:
        offsets = with_offsets(tokenizer)(question, add_special_tokens=False,
                                          return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= budget:
        return question
    logger.warning("The question has %d tokens; reading a passage keeps its first %d (half of reader_seq_len=%d).",
                   len(offsets), budget, length)
    return question[:offsets[budget - 1][1]]


@torch.no_grad()
def answer_batch(model, tokenizer, questions: list[str], top_k: int, retrieval: str | None = None,
                 max_answer_len: int | None = None) -> list[list[dict]]:
    """Answers for a batch of questions: per question, the `top_k` best spans over its top reader_beam_size blocks."""
    config = model.config
    inputs = tokenize_questions(tokenizer, questions, config, model.device)
    # [batch, dim]
    question_embeddings = model.embed_questions(**inputs)
    found = reader_blocks(model, question_embeddings, config.reader_beam_size, questions, retrieval)
    texts = [[block["text"] for block in row] for row in found.blocks]
    with TOKENIZER_LOCK:
        batch = reader_inputs(tokenizer, questions, texts, config.reader_seq_len).to(model.device)
    # [batch, rows]
    relevance = torch.einsum("bd,bkd->bk", question_embeddings, found.embeddings)
    # [batch, rows, num_spans]
    logits, starts, ends = read_in_passes(model, batch, relevance)
    return [_top_spans(logits[b], starts, ends, batch, b, found.blocks[b], top_k, max_answer_len)
            for b in range(len(questions))]


def read_in_passes(model, batch: ReaderBatch, relevance: torch.Tensor):
    """The reader over `[batch, rows, seq]` inputs. On CPU a few questions per backbone pass (at most
    READER_ROWS_PER_PASS rows, at least one question): one pass over every row of a large batch runs slower per row
    there, as its activations fall out of cache. Other devices read the whole batch at once.
    Returns logits `[batch, rows, num_spans]`, starts, ends."""
    questions, rows = batch.input_ids.shape[:2]
    step = max(1, READER_ROWS_PER_PASS // rows) if batch.input_ids.device.type == "cpu" else questions
    parts = []
    for first in range(0, questions, step):
        part = slice(first, first + step)
        logits, starts, ends = model._read(batch.input_ids[part], batch.attention_mask[part],
                                           batch.token_type_ids[part], batch.block_mask[part], relevance[part])
        parts.append(logits)
    return torch.cat(parts), starts, ends


def _top_spans(logits, starts, ends, batch: ReaderBatch, b: int, blocks: list[dict], top_k: int,
               max_answer_len: int | None = None) -> list[dict]:
    """The best `top_k` (block, span) pairs of one question from its logits `[rows, num_spans]`, skipping spans of
    more than `max_answer_len` tokens (their probabilities stay those over all spans)."""
    answers = []
    for row, span, probability in ranked_spans(logits):
        start, end = int(starts[span]), int(ends[span])
        first, last = batch.offsets[b, row, start].tolist(), batch.offsets[b, row, end].tolist()
        if first[0] < 0 or last[0] < 0:
            break  # only masked-out spans are left
        if max_answer_len is not None and end - start + 1 > max_answer_len:
            continue
        block = blocks[row]
        answers.append({"answer": block["text"][first[0]:last[1]], "score": probability,
                        "start": first[0], "end": last[1], "block_id": _maybe_int(block["block_id"]),
                        "doc_id": block["doc_id"], "title": block["title"], "text": block["text"],
                        "token_start": start, "token_end": end, "block_rank": row})
        if len(answers) == top_k:
            break
    return answers


def _maybe_int(value):
    return None if value is None else int(value)
