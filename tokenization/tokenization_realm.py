"""REALM tokenizers: BERT WordPiece (lower-cased) plus `batch_encode_candidates`.

`RealmTokenizerFast` is transformers 5's tokenizers-backed `BertTokenizer`; `RealmTokenizer` is the pure-Python
`BertTokenizerLegacy`. Both read a `vocab.txt` (a path, a directory or a Hub id through `from_pretrained`) and
produce the ids transformers 4.x's REALM tokenizers produced.
"""

from transformers import BatchEncoding, BertTokenizer
from transformers.models.bert.tokenization_bert import load_vocab
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy


class CandidateEncodingMixin:
    """Adds `batch_encode_candidates` to a BERT tokenizer."""

    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def batch_encode_candidates(self, text, text_pair=None, max_length=None, return_tensors=None, **kwargs):
        """Encode `[batch, num_candidates]` texts (or text pairs), each padded to `max_length`.

        Args:
            text (`list[list[str]]`): candidates per example, the same number in every example.
            text_pair (`list[list[str]]`, *optional*): second segments, same layout as `text`
                (`[CLS] text [SEP] text_pair [SEP]`).
            max_length (`int`): every candidate is padded (and, with `truncation=True`, cut) to this length, so that
                candidates stack into `[batch, num_candidates, max_length]`.
            return_tensors (`str`, *optional*): "pt", "np" or None (nested lists).
            **kwargs: further arguments of the tokenizer's `__call__` (e.g. `truncation=True`).

        Returns:
            `BatchEncoding` with `input_ids`, `attention_mask` and `token_type_ids` of shape
            `[batch, num_candidates, max_length]`.
        """
        if max_length is None:
            raise ValueError("batch_encode_candidates pads every candidate to one length: pass max_length=<int>.")
        _check_candidate_layout("text", text)
        if text_pair is not None:
            _check_candidate_layout("text_pair", text_pair)
            if [len(row) for row in text_pair] != [len(row) for row in text]:
                raise ValueError("text_pair must have the same [batch, num_candidates] layout as text.")
        kwargs.pop("padding", None)
        encoded = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        for row, candidates in enumerate(text):
            pairs = text_pair[row] if text_pair is not None else None
            # [num_candidates, max_length] per key
            row_encoding = self(candidates, pairs, padding="max_length", max_length=max_length, return_tensors=None,
                                **kwargs)
            for key in encoded:
                if key in row_encoding:
                    encoded[key].append(row_encoding[key])
        lengths = {len(ids) for row in encoded["input_ids"] for ids in row}
        if lengths != {max_length}:
            raise ValueError(
                f"Some candidates are longer than max_length={max_length} (lengths {sorted(lengths)}); "
                "pass truncation=True or a larger max_length."
            )
        return BatchEncoding({k: v for k, v in encoded.items() if v}, tensor_type=return_tensors)


def _check_candidate_layout(name, rows):
    if isinstance(rows, str) or not all(isinstance(row, (list, tuple)) for row in rows):
        raise ValueError(f"{name} must be a list of lists of strings, [batch, num_candidates]; got {type(rows)}.")
    counts = {len(row) for row in rows}
    if len(counts) > 1:
        raise ValueError(
            f"Every example needs the same number of candidates to stack them; {name} has rows of "
            f"{sorted(counts)} candidates."
        )


class RealmTokenizerFast(CandidateEncodingMixin, BertTokenizer):
    """Fast (Rust tokenizers) REALM tokenizer; `RealmTokenizerFast(vocab_file="vocab.txt")` or `from_pretrained`."""

    slow_tokenizer_class = None

    def __init__(self, vocab=None, vocab_file=None, **kwargs):
        if vocab is None and vocab_file is not None:
            vocab = dict(load_vocab(vocab_file))
        super().__init__(vocab=vocab, **kwargs)
        if vocab_file is not None:
            self.vocab_file = vocab_file

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` (4.x's RealmTokenizerFast had it; transformers 5 dropped it)."""
        pair = [] if token_ids_1 is None else list(token_ids_1) + [self.sep_token_id]
        return [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id] + pair

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        """0 for `[CLS] A [SEP]`, 1 for `B [SEP]` (as 4.x's RealmTokenizerFast)."""
        second = [] if token_ids_1 is None else [1] * (len(token_ids_1) + 1)
        return [0] * (len(token_ids_0) + 2) + second


class RealmTokenizer(CandidateEncodingMixin, BertTokenizerLegacy):
    """Pure-Python REALM tokenizer, identical ids to `RealmTokenizerFast`."""


RealmTokenizerFast.slow_tokenizer_class = RealmTokenizer

__all__ = ["RealmTokenizer", "RealmTokenizerFast"]
