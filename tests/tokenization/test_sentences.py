"""The rule-based sentence splitter: boundaries, abbreviations, decimals, line breaks and lossless spans."""

import re

import pytest

from tokenization.sentences import sentence_spans, split_sentences


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("text, expected", [
    ("The cat sat. The dog ran! Did it? Yes.", ["The cat sat.", "The dog ran!", "Did it?", "Yes."]),
    ("Mr. Smith met Dr. Jones and Prof. Lee. They talked.", ["Mr. Smith met Dr. Jones and Prof. Lee.", "They talked."]),
    ("Bring fruit, e.g. Apples or pears, i.e. Fresh ones. Then leave.",
     ["Bring fruit, e.g. Apples or pears, i.e. Fresh ones.", "Then leave."]),
    ("The U.S. Army marched. It rained.", ["The U.S. Army marched.", "It rained."]),
    ("J. R. R. Tolkien wrote it. Read it.", ["J. R. R. Tolkien wrote it.", "Read it."]),
    ("Pi is about 3.14159 and e is 2.718. Both are irrational.",
     ["Pi is about 3.14159 and e is 2.718.", "Both are irrational."]),
    ("He won in 1990. 2 years later he lost.", ["He won in 1990.", "2 years later he lost."]),
    ('She said "Go home." Then she left. "Why?" he asked.', ['She said "Go home."', "Then she left.",
                                                             '"Why?" he asked.']),
    ("It was No. 5 on the list. I said no. No one listened.",
     ["It was No. 5 on the list.", "I said no.", "No one listened."]),
    ("first line without a period\nsecond line\n\nA paragraph. Two sentences.",
     ["first line without a period", "second line", "A paragraph.", "Two sentences."]),
    ("lower case after a period. does not split", ["lower case after a period. does not split"]),
    ("Wait... What happened?", ["Wait...", "What happened?"]),
    ("Élan vital. École normale.", ["Élan vital.", "École normale."]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
def test_blank_text_has_no_sentences(text):
    assert split_sentences(text) == []
    assert sentence_spans(text) == []


def test_spans_are_ordered_trimmed_slices_that_cover_the_text():
    text = ("  Mr. Brown arrived at 5 p.m. on Jan. 3. He left.\r\n\nThe U.K. team scored 2.5 points!  "
            "(See fig. 3.) Done?   yes\u2028New line here. ")
    spans = sentence_spans(text)
    assert len(spans) >= 5
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end <= len(text)
        piece = text[start:end]
        assert piece == piece.strip()
        assert not text[previous_end:start].strip(), "only whitespace may lie between sentences"
        previous_end = end
    assert not text[previous_end:].strip()
    assert _squeeze("".join(split_sentences(text))) == _squeeze(text)


def test_no_sentence_crosses_a_line_break():
    text = "One line.\nAnother line. Still another\rlast"
    assert all("\n" not in s and "\r" not in s for s in split_sentences(text))
    assert split_sentences(text) == ["One line.", "Another line.", "Still another", "last"]
