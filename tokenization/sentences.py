"""A dependency-free, rule-based sentence splitter that keeps character spans.

A sentence ends at `.`, `!` or `?` (possibly followed by closing quotes or brackets) when whitespace and then an
upper-case letter, a digit, an opening quote or an opening bracket follow. Common abbreviations ("Mr.", "Dr.",
"e.g.", "U.S."), initials ("J. R. R. Tolkien") and decimals ("3.14") do not end a sentence. Every line break ends
one. Sentences are slices of the text with the surrounding whitespace trimmed, so joining them back loses only
whitespace.
"""

import re
import unicodedata

# Abbreviations that never end a sentence (compared lower-cased, with their final period).
ABBREVIATIONS = frozenset(
    """mr. mrs. ms. messrs. dr. prof. sr. jr. st. mt. ft. rev. hon. gen. col. lt. maj. sgt. capt. cmdr. adm. gov.
    sen. rep. pres. supt. vs. v. cf. al. approx. ca. c. viz. inc. ltd. co. corp. bros. dept. univ. assn. est.
    jan. feb. mar. apr. jun. jul. aug. sep. sept. oct. nov. dec. ph.d.""".split()
)
# Abbreviations that hold only before a number ("No. 5", "pp. 10"); elsewhere ("I said no.") they may end one.
NUMBER_ABBREVIATIONS = frozenset("no. nos. vol. vols. pp. p. fig. figs. art. sec. ch. op.".split())

_LINE = re.compile(r"[^\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
_CANDIDATE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)")
_OPENERS = "\"'\u201c\u2018([" + "\u00bf\u00a1"
_DOTTED = re.compile(r"(?:[A-Za-z]\.){2,}")
_INITIAL = re.compile(r"[A-Z]\.")
# Unicode categories of characters that show nothing: controls (NUL...), format characters (zero-width spaces and
# joiners, byte-order marks), surrogates, private use, unassigned, and separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: it is empty or holds only whitespace, control and format characters (NUL,
    zero-width spaces, byte-order marks...). Such a text counts as empty wherever the package checks for one."""
    return all(char.isspace() or unicodedata.category(char) in INVISIBLE_CATEGORIES for char in text)


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences (original characters, surrounding whitespace trimmed, empty ones dropped)."""
    return [text[start:end] for start, end in sentence_spans(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans `(start, end)` of the sentences of `text`, in order and non-overlapping.

    Every non-whitespace character of `text` lies in exactly one span.
    """
    spans = []
    for line in _LINE.finditer(text):
        start = line.start()
        for end in _boundaries(text, line.start(), line.end()):
            spans.extend(_trimmed(text, start, end))
            start = end
        spans.extend(_trimmed(text, start, line.end()))
    return spans


def _boundaries(text: str, start: int, end: int):
    """Character positions inside `text[start:end]` right after a sentence-ending punctuation run."""
    for match in _CANDIDATE.finditer(text, start, end):
        following = _next_visible(text, match.end(), end)
        if following is None or not _starts_sentence(text[following]):
            continue
        if match.group().startswith(".") and not _period_ends_sentence(text, start, match.start(), text[following]):
            continue
        yield match.end()


def _next_visible(text: str, position: int, end: int):
    while position < end and text[position].isspace():
        position += 1
    return position if position < end else None


def _starts_sentence(char: str) -> bool:
    return char.isupper() or char.isdigit() or char in _OPENERS


def _period_ends_sentence(text: str, line_start: int, period: int, following: str) -> bool:
    """Whether the period at `period` ends a sentence, judged from the word it closes."""
    word_start = period
    while word_start > line_start and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:period + 1].lstrip("\"'\u201c\u2018([{")
    if not word or word == ".":
        return True
    lowered = word.lower()
    if lowered in ABBREVIATIONS or _DOTTED.fullmatch(word) or _INITIAL.fullmatch(word):
        return False
    return not (lowered in NUMBER_ABBREVIATIONS and following.isdigit())


def _trimmed(text: str, start: int, end: int) -> list[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if start < end else []
