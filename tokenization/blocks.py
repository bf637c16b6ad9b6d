"""Corpus -> blocks: documents cut greedily by sentences into blocks of at most `max_block_length` wordpieces.

A block is a slice of its document (original characters, never decoded wordpieces). Its length counts the
wordpieces of its text alone: no special tokens, no title (the block tower adds `[CLS] title [SEP] ... [SEP]`,
see `block_inputs`). A sentence longer than the limit is cut at word boundaries found with the fast tokenizer's
offsets and word ids (inside a word only when one word alone is longer than the limit).
"""

import logging

import numpy as np

from tokenization.offsets import with_offsets
from tokenization.sentences import is_blank, sentence_spans

logger = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK_LENGTH = 288  # ARCHITECTURE.md, the REALM recipe
CORPUS_COLUMNS = ("doc_id", "title", "text")
BLOCK_COLUMNS = ("block_id", "doc_id", "title", "text", "num_tokens")


def split_into_blocks(corpus, tokenizer, max_block_length: int = DEFAULT_MAX_BLOCK_LENGTH, num_proc=None,
                      batch_size: int = 256):
    """Cut every document of `corpus` into blocks of at most `max_block_length` wordpieces.

    Args:
        corpus (`datasets.Dataset`): `doc_id`, `title` and `text` columns, as `load_corpus` returns.
        tokenizer: a BERT WordPiece tokenizer (`RealmTokenizerFast`, `BertTokenizerFast`, or a slow one, read
            through its fast twin: `offsets.with_offsets`).
        max_block_length (`int`): the most wordpieces of block text (288 in REALM).
        num_proc (`int`, *optional*): worker processes for `datasets.map`; the result is the same for any value.
        batch_size (`int`): documents per `datasets.map` batch.

    Returns:
        `datasets.Dataset` with `block_id` (int64, 0..n-1 in corpus order), `doc_id`, `title`, `text` (str) and
        `num_tokens` (int32, wordpieces of `text`). Documents whose text is blank (empty, or only whitespace, control
        and zero-width characters: `sentences.is_blank`) give no block.
    """
    from datasets import Features, Value

    _check_arguments(corpus, tokenizer, max_block_length, num_proc, batch_size)
    tokenizer = with_offsets(tokenizer)  # a slow tokenizer: its fast twin (same ids, with offsets)
    features = Features({"doc_id": Value("string"), "title": Value("string"), "text": Value("string"),
                         "num_tokens": Value("int32")})
    blocks = corpus.map(
        _split_batch, batched=True, batch_size=batch_size, num_proc=num_proc, remove_columns=corpus.column_names,
        features=features, fn_kwargs={"tokenizer": tokenizer, "max_block_length": max_block_length},
        desc=f"Splitting documents into blocks of <= {max_block_length} wordpieces",
    )
    blocks = blocks.add_column("block_id", np.arange(len(blocks), dtype=np.int64), feature=Value("int64"))
    logger.info("Split %d documents into %d blocks of at most %d wordpieces.", len(corpus), len(blocks),
                max_block_length)
    return blocks.select_columns(list(BLOCK_COLUMNS))


def _check_arguments(corpus, tokenizer, max_block_length, num_proc, batch_size) -> None:
    from datasets import Dataset

    if not isinstance(corpus, Dataset):
        raise TypeError(f"corpus must be a datasets.Dataset, got {type(corpus).__name__}; load it with "
                        "tokenization.corpus.load_corpus(path_or_hub_id).")
    missing = [name for name in CORPUS_COLUMNS if name not in corpus.column_names]
    if missing:
        raise ValueError(f"corpus lacks the columns {missing} (it has {corpus.column_names}); load it with "
                         "tokenization.corpus.load_corpus, which maps field names with title_field/text_field.")
    if isinstance(max_block_length, bool) or not isinstance(max_block_length, int) or max_block_length < 1:
        raise ValueError(f"max_block_length must be a positive int, got {max_block_length!r}.")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be None or a positive int, got {num_proc!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


def _split_batch(batch: dict, tokenizer, max_block_length: int) -> dict:
    """`datasets.map` function: a batch of documents -> the rows of their blocks, in document order."""
    texts = batch["text"]
    spans = [sentence_spans(text) for text in texts]
    sentences = [texts[i][start:end] for i, doc_spans in enumerate(spans) for start, end in doc_spans]
    counts = iter(_count(tokenizer, sentences))
    rows = {"doc_id": [], "title": [], "text": [], "num_tokens": []}
    for i, text in enumerate(texts):
        pieces = []
        for (start, end), count in zip(spans[i], counts):
            if count == 0 or is_blank(text[start:end]):
                continue  # nothing a tokenizer or a reader can see: no block of [CLS] [SEP] alone
            if count <= max_block_length:
                pieces.append((start, end, count))
            else:
                pieces.extend(_cut_span(tokenizer, text, start, end, max_block_length))
        for start, end, count in _pack(pieces, max_block_length):
            rows["doc_id"].append(str(batch["doc_id"][i]))
            rows["title"].append(batch["title"][i] or "")
            rows["text"].append(text[start:end])
            rows["num_tokens"].append(count)
    if not _counts_add_up(tokenizer):
        rows["num_tokens"] = _count(tokenizer, rows["text"])
        _recut_oversized(rows, tokenizer, max_block_length)
    return rows


def _counts_add_up(tokenizer) -> bool:
    """Whether a block's wordpieces are the sum of its sentences' (WordPiece after BERT's whitespace/punctuation
    pre-tokenizer: no wordpiece crosses the whitespace between sentences). Otherwise blocks are re-counted."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return (backend is not None and type(backend.pre_tokenizer).__name__ == "BertPreTokenizer"
            and type(backend.model).__name__ == "WordPiece")


def _count(tokenizer, texts: list[str]) -> list[int]:
    """Wordpieces of each text, without special tokens."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                        verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def _pack(pieces: list[tuple[int, int, int]], max_block_length: int) -> list[tuple[int, int, int]]:
    """Greedy packing: consecutive `(start, end, num_tokens)` pieces join a block while it stays within the limit."""
    blocks = []
    for start, end, count in pieces:
        if blocks and blocks[-1][2] + count <= max_block_length:
            blocks[-1][1:] = [end, blocks[-1][2] + count]
        else:
            blocks.append([start, end, count])
    return [tuple(block) for block in blocks]


def _cut_span(tokenizer, text: str, start: int, end: int, max_block_length: int) -> list[tuple[int, int, int]]:
    """Cut `text[start:end]` into `(start, end, num_tokens)` pieces of at most `max_block_length` wordpieces.

    Cuts fall before the latest word-initial wordpiece that keeps a piece within the limit, so every piece is the
    original substring and (for WordPiece) tokenises to exactly the wordpieces it had in context. Pieces are
    re-counted, and any piece still too long (a cut inside a word, or a tokenizer that is not context-free) is cut
    again.
    """
    encoding = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = encoding["offset_mapping"]  # [num_tokens, 2] character spans relative to `start`
    word_ids = encoding.word_ids()
    bounds, first = [start], 0
    while len(offsets) - first > max_block_length:
        first = _cut_index(word_ids, first, max_block_length)
        bounds.append(start + offsets[first][0])
    bounds.append(end)
    spans = [span for a, b in zip(bounds, bounds[1:]) for span in _strip(text, a, b)]
    pieces = []
    for (a, b), count in zip(spans, _count(tokenizer, [text[a:b] for a, b in spans])):
        if count <= max_block_length or (a, b) == (start, end):
            pieces.append((a, b, count))
        else:
            pieces.extend(_cut_span(tokenizer, text, a, b, max_block_length))
    return pieces


def _cut_index(word_ids: list, first: int, max_block_length: int) -> int:
    """Index of the wordpiece that starts the next piece after the piece starting at `first`."""
    for index in range(first + max_block_length, first, -1):
        if word_ids[index] is None or word_ids[index] != word_ids[index - 1]:
            return index
    return first + max_block_length  # one word longer than the limit: cut inside it


def _strip(text: str, start: int, end: int) -> list[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if start < end else []


def _recut_oversized(rows: dict, tokenizer, max_block_length: int) -> None:
    """Replace any block over the limit by pieces of it (only tokenizers whose counts are not additive need it)."""
    if all(count <= max_block_length for count in rows["num_tokens"]):
        return
    fixed = {key: [] for key in rows}
    for doc_id, title, text, count in zip(rows["doc_id"], rows["title"], rows["text"], rows["num_tokens"]):
        pieces = [(0, len(text), count)] if count <= max_block_length else \
            _cut_span(tokenizer, text, 0, len(text), max_block_length)
        for start, end, piece_count in pieces:
            fixed["doc_id"].append(doc_id)
            fixed["title"].append(title)
            fixed["text"].append(text[start:end])
            fixed["num_tokens"].append(piece_count)
    rows.update(fixed)
