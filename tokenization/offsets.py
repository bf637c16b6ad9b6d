"""Character offsets from any REALM tokenizer: the slow one is paired with a fast twin of the same vocabulary.

Reader inputs, answer spans, blocks and masked queries need offset mappings, which only tokenizers-backed (fast)
tokenizers give. A slow WordPiece tokenizer (`RealmTokenizer`, `BertTokenizerLegacy`) is therefore converted once
into `RealmTokenizerFast` with the same vocabulary, settings and added tokens, which gives the same ids, plus offsets;
the twin is kept per slow tokenizer and rebuilt when the slow one changes (added tokens, padding side, ...).
The one difference left is the fast tokenizer's: when `truncation="longest_first"` must cut a pair whose two parts
end up equally long, the Rust tokenizer takes the last token from the first part, the Python one from the second.
Reader inputs follow the fast tokenizer there, as transformers 4.x's retriever (which loaded the fast one) did.
"""

import weakref

from tokenization.tokenization_realm import RealmTokenizerFast

# slow tokenizer -> (its settings when converted, the fast twin)
_TWINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

_FIX = ("pass a fast tokenizer instead (RealmTokenizerFast, or AutoTokenizer.from_pretrained(..., use_fast=True) on a "
        "directory with a tokenizer.json)")


def with_offsets(tokenizer):
    """`tokenizer` itself when it is fast, else its fast twin (same ids, with `return_offsets_mapping`).

    Raises:
        TypeError: the slow tokenizer is not a BERT WordPiece tokenizer, or uses settings a fast BERT tokenizer
            cannot reproduce (`do_basic_tokenize=False`, `never_split`, `do_split_on_punc=False`).
    """
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    key = _settings(tokenizer)
    cached = _TWINS.get(tokenizer)
    if cached is None or cached[0] != key:
        cached = (key, _fast_twin(tokenizer))
        _TWINS[tokenizer] = cached
    return cached[1]


def _settings(tokenizer) -> tuple:
    """Everything of a slow WordPiece tokenizer that changes its encodings (checked to be reproducible)."""
    name = type(tokenizer).__name__
    basic = getattr(tokenizer, "basic_tokenizer", None)
    if not isinstance(getattr(tokenizer, "vocab", None), dict) or not hasattr(tokenizer, "wordpiece_tokenizer"):
        raise TypeError(f"Character offsets need a fast tokenizer, and {name} is a slow tokenizer that is not BERT "
                        f"WordPiece, so it cannot be converted; {_FIX}.")
    if not getattr(tokenizer, "do_basic_tokenize", True) or basic is None:
        raise TypeError(f"{name} has do_basic_tokenize=False, which a fast BERT tokenizer cannot reproduce; {_FIX}.")
    if basic.never_split or not getattr(basic, "do_split_on_punc", True):
        raise TypeError(f"{name} uses never_split or do_split_on_punc=False, which a fast BERT tokenizer cannot "
                        f"reproduce; add those words as tokens (tokenizer.add_tokens) instead, or {_FIX}.")
    added = tuple(sorted((index, str(token), token.special) for index, token in
                         tokenizer.added_tokens_decoder.items()))
    return (len(tokenizer.vocab), basic.do_lower_case, basic.tokenize_chinese_chars, basic.strip_accents,
            tokenizer.wordpiece_tokenizer.max_input_chars_per_word, added, tuple(tokenizer.special_tokens_map.items()),
            tokenizer.padding_side, tokenizer.truncation_side, tokenizer.model_max_length)


def _fast_twin(tokenizer) -> RealmTokenizerFast:
    basic = tokenizer.basic_tokenizer
    special = {name: getattr(tokenizer, name) for name in ("unk_token", "sep_token", "pad_token", "cls_token",
                                                           "mask_token") if getattr(tokenizer, name) is not None}
    fast = RealmTokenizerFast(vocab=dict(tokenizer.vocab), do_lower_case=basic.do_lower_case,
                              tokenize_chinese_chars=basic.tokenize_chinese_chars, strip_accents=basic.strip_accents,
                              model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
                              truncation_side=tokenizer.truncation_side, **special)
    fast.backend_tokenizer.model.max_input_chars_per_word = tokenizer.wordpiece_tokenizer.max_input_chars_per_word
    for index, token in sorted(tokenizer.added_tokens_decoder.items()):
        if fast.convert_tokens_to_ids(str(token)) != index:
            fast.add_tokens([token], special_tokens=token.special)
    mismatched = [(index, str(token)) for index, token in tokenizer.added_tokens_decoder.items()
                  if fast.convert_tokens_to_ids(str(token)) != index]
    if mismatched:
        raise TypeError(f"{type(tokenizer).__name__}'s added tokens {mismatched[:5]} do not get the same ids in a fast "
                        f"tokenizer of its vocabulary (ids must follow the vocabulary without gaps); {_FIX}.")
    return fast
