"""Reader inputs `[CLS] question [SEP] block [SEP]`, their block masks, character offsets and gold answer spans.

The tokenisation follows transformers 4.x's REALM retriever (a text pair, `truncation=True`, padded to the
longest row), so the same question and blocks give the same token ids; the character offsets let an answer span
be cut from the original block text instead of decoded from wordpieces.
"""

from dataclasses import dataclass

import torch

from tokenization.offsets import with_offsets


@dataclass
class ReaderBatch:
    """Reader inputs for `batch` questions with `rows` blocks each.

    input_ids, attention_mask, token_type_ids: `[batch, rows, seq]`; block_mask `[batch, rows, seq]` (true on
    block tokens); offsets `[batch, rows, seq, 2]` character offsets into the block text (-1 outside the block).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    block_mask: torch.Tensor
    offsets: torch.Tensor

    def to(self, device) -> "ReaderBatch":
        return ReaderBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def reader_inputs(tokenizer, questions: list[str], blocks: list[list[str]], max_length: int) -> ReaderBatch:
    """Tokenise every (question, block) pair; `blocks[i]` are the texts of question i's blocks (same count each).

    A slow tokenizer is read through its fast twin (`offsets.with_offsets`): the same ids, with character offsets.
    """
    rows = {len(texts) for texts in blocks}
    if len(questions) != len(blocks) or len(rows) != 1:
        raise ValueError(f"Need the same number of blocks for each of the {len(questions)} questions; got "
                         f"{[len(texts) for texts in blocks]}.")
    (num_rows,) = rows
    firsts = [q for q, texts in zip(questions, blocks, strict=True) for _ in texts]
    seconds = [text for texts in blocks for text in texts]
    encoding = with_offsets(tokenizer)(firsts, seconds, padding=True, truncation=True, max_length=max_length,
                         return_special_tokens_mask=True, return_offsets_mapping=True, return_tensors="pt")
    # [batch * rows, seq]
    block_mask = ~encoding["special_tokens_mask"].bool() & encoding["token_type_ids"].bool()
    # [batch * rows, seq, 2]
    offsets = torch.where(block_mask.unsqueeze(-1), encoding["offset_mapping"], torch.full_like(
        encoding["offset_mapping"], -1))

    def shaped(tensor):
        # [batch * rows, seq, ...] -> [batch, rows, seq, ...]
        return tensor.view(len(questions), num_rows, *tensor.shape[1:])

    return ReaderBatch(shaped(encoding["input_ids"]), shaped(encoding["attention_mask"]),
                       shaped(encoding["token_type_ids"]), shaped(block_mask), shaped(offsets))


def answer_token_spans(input_ids: torch.Tensor, block_mask: torch.Tensor, answer_ids: list[list[int]]):
    """Where answers occur, token by token, inside the block part of reader inputs (as transformers 4.x matched).

    input_ids, block_mask: `[rows, seq]`; answer_ids: the answers' wordpiece ids (no special tokens).
    Returns has_answers `[rows]` bool and starts, ends `[rows, max_matches]` inclusive positions, -1 padded.
    """
    matches = [_matches(row.tolist(), mask.tolist(), answer_ids) for row, mask in zip(input_ids, block_mask,
                                                                                      strict=True)]
    return span_tensors(matches)


def span_tensors(matches: list[list[tuple[int, int]]]):
    """Per-row lists of (start, end) token spans -> has `[rows]` bool, starts and ends `[rows, max_matches]` (-1
    padded; `[rows, 0]` when no row has a span, as 4.x gave)."""
    width = max([len(spans) for spans in matches], default=0)
    starts = torch.full((len(matches), width), -1, dtype=torch.long)
    ends = torch.full((len(matches), width), -1, dtype=torch.long)
    for row, spans in enumerate(matches):
        for j, (start, end) in enumerate(spans):
            starts[row, j], ends[row, j] = start, end
    return torch.tensor([bool(spans) for spans in matches]), starts, ends


def _matches(ids: list[int], mask: list[bool], answer_ids: list[list[int]]) -> list[tuple[int, int]]:
    spans = []
    for answer in answer_ids:
        width = len(answer)
        for start in range(len(ids) - width + 1):
            if width and mask[start] and mask[start + width - 1] and ids[start:start + width] == answer:
                spans.append((start, start + width - 1))
    return spans


def char_span_to_tokens(offsets: torch.Tensor, start_char: int, end_char: int) -> tuple[int, int] | None:
    """The token span `[start, end]` (inclusive) covering characters `[start_char, end_char)` of a block, or None.

    offsets: `[seq, 2]` as in ReaderBatch (one row); the span must start and end on token boundaries.
    """
    starts = (offsets[:, 0] == start_char).nonzero()
    ends = (offsets[:, 1] == end_char).nonzero()
    if not len(starts) or not len(ends) or ends[0, 0] < starts[0, 0]:
        return None
    return int(starts[0, 0]), int(ends[0, 0])
