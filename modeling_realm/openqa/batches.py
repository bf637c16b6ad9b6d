"""Training batches for open-QA fine-tuning (ORQA/REALM): retrieve, mark the blocks and spans that hold an answer.

Block embeddings stay frozen in the index (it is not rebuilt); the retriever loss reaches the question tower
through the relevance scores `question . block`, recomputed in torch from the stored block embeddings. A block
"has an answer" when an answer's wordpieces occur in it (as transformers 4.x matched them) or, for regular-
expression answers (CuratedTREC), when the pattern matches its text.
"""

import numpy as np
import torch

from modeling_realm.openqa.answering import reader_blocks, tokenize_questions
from modeling_realm.openqa.answers import compile_answer_pattern
from modeling_realm.retrieval import RetrievedBlocks, check_index
from tokenization.offsets import with_offsets
from tokenization.reader_inputs import answer_token_spans, char_span_to_tokens, reader_inputs, span_tensors

READ_MODES = ("retrieved", "answer_block")


def training_batch(model, tokenizer, questions: list[str], answers: list[list[str]], match: str = "string",
                   num_blocks: int | None = None, read: str = "retrieved") -> dict | None:
    """Inputs for `RealmForOpenQA.forward` with gold annotations, for a batch of questions and their answers.

    Args:
        answers: per question, answer strings (match="string") or regular expressions (match="regex").
        num_blocks: blocks retrieved per question for the retriever loss (default `config.searcher_beam_size`).
        read: "retrieved" (ORQA): the reader reads the first `config.reader_beam_size` retrieved blocks.
            "answer_block" (a reading-comprehension warm-up): the reader reads one block per question, the
            best-ranked retrieved block that holds an answer (moved first; the retriever loss is unchanged by
            the order), and questions whose retrieved blocks hold no answer are left out of the batch.
    Returns:
        a dict with input_ids/attention_mask/token_type_ids `[batch, q_seq]`, block_ids and block_embeddings
        `[batch, k(, dim)]`, reader_* and block_mask `[batch, rows, seq]`, has_answers `[batch, k]` and
        start_positions/end_positions `[batch, rows, num_matches]` (-1 pads), on the model's device; None when
        read="answer_block" and no question of the batch has an answer among its blocks.
    """
    if match not in ("string", "regex"):
        raise ValueError(f"match must be 'string' or 'regex', got {match!r}.")
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {READ_MODES}, got {read!r}.")
    if len(answers) != len(questions) or any(not a for a in answers):
        raise ValueError("Every question needs a non-empty list of answers (one list per question).")
    config = model.config
    check_index(model.index, config.retriever_proj_size)
    tokenizer = with_offsets(tokenizer)  # a slow tokenizer: its fast twin, so every id comes from one tokenizer
    k = min(num_blocks or config.searcher_beam_size, len(model.index))
    inputs = tokenize_questions(tokenizer, questions, config, model.device)
    with torch.no_grad():
        found = reader_blocks(model, model.embed_questions(**inputs), k)
    texts = [[block["text"] for block in row] for row in found.blocks]
    # [batch, k]
    has_answers = torch.stack([blocks_with_answer(tokenizer, texts[b], answers[b], match) for b in
                               range(len(questions))])
    rows = min(config.reader_beam_size, k)
    if read == "answer_block":
        kept = has_answers.any(dim=1).nonzero().flatten().tolist()
        if not kept:
            return None
        found, has_answers, texts = _answer_block_first(found, has_answers, texts, kept)
        questions, answers = [questions[b] for b in kept], [answers[b] for b in kept]
        inputs = {name: tensor[kept] for name, tensor in inputs.items()}
        rows = 1
    batch = reader_inputs(tokenizer, questions, [row[:rows] for row in texts], config.reader_seq_len)
    spans = [_gold_spans(tokenizer, batch, b, answers[b], match, texts[b][:rows]) for b in range(len(questions))]
    has_answers[:, :rows] = torch.stack([has for has, _, _ in spans])  # the read rows: as matched in the inputs
    starts, ends = _pad_matches([s for _, s, _ in spans]), _pad_matches([e for _, _, e in spans])
    device = model.device
    return dict(**inputs, block_ids=torch.from_numpy(found.block_ids).to(device),
                block_embeddings=found.embeddings, reader_input_ids=batch.input_ids.to(device),
                reader_attention_mask=batch.attention_mask.to(device),
                reader_token_type_ids=batch.token_type_ids.to(device), block_mask=batch.block_mask.to(device),
                has_answers=has_answers.to(device), start_positions=starts.to(device), end_positions=ends.to(device))


def _answer_block_first(found, has_answers: torch.Tensor, texts: list[list[str]], kept: list[int]):
    """The `kept` questions' retrieval, each with its best-ranked block that holds an answer moved to the front."""
    orders = []
    for b in kept:
        first = int(has_answers[b].nonzero()[0])
        orders.append([first] + [i for i in range(has_answers.shape[1]) if i != first])
    # [kept, k]
    order = torch.tensor(orders)
    block_ids = np.take_along_axis(found.block_ids[kept], order.numpy(), axis=1)
    embeddings = found.embeddings[kept].gather(1, order.to(found.embeddings.device)[..., None].expand(
        -1, -1, found.embeddings.shape[-1]))
    reordered = RetrievedBlocks(block_ids, np.take_along_axis(found.scores[kept], order.numpy(), axis=1),
                                embeddings=embeddings)
    return (reordered, has_answers[kept].gather(1, order),
            [[texts[b][i] for i in row] for b, row in zip(kept, orders, strict=True)])


def _gold_spans(tokenizer, batch, b: int, answers: list[str], match: str, texts: list[str]):
    """has `[rows]`, starts/ends `[rows, n]` of question b's reader inputs (`texts`: its read blocks)."""
    if match == "string":
        answer_ids = tokenizer(list(answers), add_special_tokens=False).input_ids
        return answer_token_spans(batch.input_ids[b], batch.block_mask[b], answer_ids)
    found = []
    for row, text in enumerate(texts):
        offsets = batch.offsets[b, row]
        visible = text[:max(int(offsets[:, 1].max()), 0)]  # the part of the block that survived truncation
        found.append(_token_spans_of(visible, offsets, answers))
    return span_tensors(found)


def _token_spans_of(text: str, offsets, patterns: list[str]) -> list[tuple[int, int]]:
    spans = []
    for pattern in patterns:
        for hit in compile_answer_pattern(pattern).finditer(text):
            tokens = char_span_to_tokens(offsets, hit.start(), hit.end()) if hit.end() > hit.start() else None
            if tokens is not None:
                spans.append(tokens)
    return spans


def blocks_with_answer(tokenizer, texts: list[str], answers: list[str], match: str) -> torch.Tensor:
    """`[k]` bool: does each whole block text hold an answer."""
    if match == "regex":
        return torch.tensor([any(compile_answer_pattern(p).search(text) for p in answers) for text in texts])
    block_ids = tokenizer(texts, add_special_tokens=False).input_ids
    answer_ids = [ids for ids in tokenizer(list(answers), add_special_tokens=False).input_ids if ids]
    return torch.tensor([any(_contains(ids, answer) for answer in answer_ids) for ids in block_ids])


def _contains(ids: list[int], answer: list[int]) -> bool:
    width = len(answer)
    return any(ids[i:i + width] == answer for i in range(len(ids) - width + 1))


def _pad_matches(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack `[rows, n_i]` match tensors into `[batch, rows, max n]`, padding with -1 (at least one column)."""
    width = max([t.shape[-1] for t in tensors] + [1])
    return torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=-1) for t in tensors])

