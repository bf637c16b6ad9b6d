"""Token inputs for the block tower: `[CLS] title [SEP] text [SEP]`, or `[CLS] text [SEP]` for untitled blocks.

Every stage that embeds blocks (index building, re-ranking, refresh) goes through `block_inputs`, so a block is
always embedded from the same tokens.
"""

DEFAULT_BLOCK_SEQ_LEN = 512  # BERT's position limit; blocks of 288 wordpieces plus a title fit


def block_inputs(tokenizer, titles, texts, max_length: int = DEFAULT_BLOCK_SEQ_LEN, return_tensors: str = "pt"):
    """Tokenise blocks and pad them to the longest in the batch.

    Titles that are empty are left out (a single segment); otherwise the title is the first segment and only the
    text is truncated to fit `max_length`.
    Returns the tokenizer's BatchEncoding with input_ids, attention_mask, token_type_ids `[n, seq]`.
    """
    if len(titles) != len(texts):
        raise ValueError(f"Got {len(titles)} titles for {len(texts)} texts; pass one title ('' for none) per block.")
    titled = [i for i, title in enumerate(titles) if title]
    untitled = [i for i, title in enumerate(titles) if not title]
    rows = [None] * len(texts)
    if titled:
        pairs = tokenizer([titles[i] for i in titled], [texts[i] for i in titled], truncation="only_second",
                          max_length=max_length, return_token_type_ids=True)
        _scatter(rows, titled, pairs)
    if untitled:
        singles = tokenizer([texts[i] for i in untitled], truncation=True, max_length=max_length,
                            return_token_type_ids=True)
        _scatter(rows, untitled, singles)
    return tokenizer.pad(rows, padding="longest", return_tensors=return_tensors)


def _scatter(rows: list, positions: list[int], encoding) -> None:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    for j, i in enumerate(positions):
        rows[i] = {key: encoding[key][j] for key in keys}
