"""Answer matching for open-domain QA, and a loader for QA files (NQ-open, WebQuestions, CuratedTREC, SQuAD).

The conventions are those behind the REALM/ORQA paper numbers (ORQA's `orqa/utils/eval_utils.py`, DrQA's
`regex_match_score`) and DPR's retriever check (`dpr/data/qa_validation.py`), re-implemented here:

- `normalize_answer`: unicode NFD, lower case, ASCII punctuation removed, the articles a/an/the removed, whitespace
  collapsed (SQuAD v1.1's normalisation plus ORQA's NFD step, which only makes composed and decomposed accents equal).
- `exact_match` / `f1_score`: SQuAD exact match and token F1 on normalised text, best over the reference answers.
- `regex_match` (CuratedTREC): each pattern is compiled with IGNORECASE | UNICODE | MULTILINE and applied with
  `re.match` to the raw prediction. That anchors the pattern at the start of the prediction but is NOT a full match:
  the pattern "Sweden" accepts "Sweden and Norway" and rejects "in Sweden" (pass `fullmatch=True` for the strict
  variant). ORQA and DrQA score a pattern that does not compile as a miss; here it raises ValueError naming it.
- `has_answer` / `answer_spans` with match="string": text and answers are NFD-normalised and split by an uncased
  word tokenizer (runs of letters, digits and marks; any other non-space character is a token of its own); a block
  contains an answer when the answer's token sequence occurs in the block's, so "paris" is not in "comparison".
  With match="regex", each (NFD) pattern is searched anywhere in the (NFD) text with the flags above.
"""

import functools
import json
import logging
import re
import string
import unicodedata
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import regex

from tokenization.jsonl import jsonl_values
from tokenization.sentences import is_blank

logger = logging.getLogger(__name__)

REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE
MATCH_TYPES = ("string", "regex")
SKIP_HINT = "Fix the record, or pass on_error='skip' to drop bad records with a logged count."

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")  # a word, or one other visible character
_SEP = "\x00"  # a control character: never part of a token, so it can join token keys for substring search

Tokenizer = Callable[[str], list[tuple[str, int, int]]]  # text -> [(token, start char, end char)]


# ---------------------------------------------------------------- prediction scoring


def normalize_answer(s: str) -> str:
    """SQuAD answer normalisation (NFD, lower case, no punctuation, no articles, single spaces)."""
    s = unicodedata.normalize("NFD", s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers) -> bool:
    """Whether the normalised prediction equals any normalised reference answer (a string or a list of them)."""
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(answer) for answer in _answer_list(answers))


def f1_score(prediction: str, answers) -> float:
    """SQuAD token F1 in [0, 1] of the normalised prediction, the best over the reference answers.

    When the prediction or an answer normalises to nothing, the score is 1.0 if both do and 0.0 otherwise (the
    SQuAD 2.0 rule), so F1 is never below exact match.
    """
    predicted = normalize_answer(prediction).split()
    return max(_token_f1(predicted, normalize_answer(answer).split()) for answer in _answer_list(answers))


def _token_f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def regex_match(prediction: str, patterns, fullmatch: bool = False) -> bool:
    """CuratedTREC scoring: whether any pattern matches the prediction from its first character.

    Args:
        prediction (`str`): the predicted answer, used as is (not normalised), as ORQA and DrQA do.
        patterns (`str` or list of `str`): regular expressions (Python `re` syntax).
        fullmatch (`bool`): require the pattern to match the whole prediction instead of a prefix of it.

    Raises:
        ValueError: a pattern does not compile; the message names it.
    """
    for pattern in _answer_list(patterns):
        compiled = compile_answer_pattern(pattern)
        if (compiled.fullmatch if fullmatch else compiled.match)(prediction) is not None:
            return True
    return False


@functools.lru_cache(maxsize=16384)
def compile_answer_pattern(pattern: str) -> re.Pattern:
    """Compile a CuratedTREC answer pattern with IGNORECASE | UNICODE | MULTILINE (cached)."""
    try:
        return re.compile(pattern, REGEX_FLAGS)
    except re.error as error:
        raise ValueError(f"Invalid answer regular expression {pattern!r}: {error}. Fix the pattern (escape a literal "
                         "backslash as \\\\), or load the file with load_qa_file(..., match='regex', "
                         "on_error='skip') to drop records whose patterns do not compile.") from error


def _answer_list(answers) -> list[str]:
    """A reference answer or pattern, or a list of them, as a non-empty list of strings."""
    if isinstance(answers, str):
        return [answers]
    if not isinstance(answers, Iterable):
        raise TypeError(f"answers must be a string or a list of strings, got {type(answers).__name__}.")
    answers = list(answers)
    if not answers:
        raise ValueError("No reference answers given; every question needs at least one answer string (or pattern).")
    for answer in answers:
        if not isinstance(answer, str):
            raise TypeError(f"answers must be strings, got {type(answer).__name__} ({answer!r}); convert them with "
                            "str() or fix the data.")
    return answers


# ---------------------------------------------------------------- answers in blocks


def simple_tokenize(text: str) -> list[tuple[str, int, int]]:
    """Split text into words (runs of letters, digits, marks) and single other non-space characters, with offsets."""
    return [(found.group(), found.start(), found.end()) for found in _TOKEN.finditer(text)]


def has_answer(text: str, answers, match: str = "string", tokenizer: Tokenizer | None = None) -> bool:
    """Whether a block's text contains any of the answers (see the module docstring for the two match types).

    Args:
        text (`str`): the block (or any passage) to look in.
        answers (`str` or list of `str`): answer strings, or regular expressions when `match="regex"`.
        match (`str`): "string" (token-sequence match after NFD and lower-casing) or "regex" (pattern search).
        tokenizer (callable, *optional*): for "string", maps a text to `[(token, start, end), ...]`; default
            `simple_tokenize`. Tokens are compared after NFD and lower-casing.
    """
    return next(_spans(text, answers, match, tokenizer), None) is not None


def answer_spans(text: str, answers, match: str = "string", tokenizer: Tokenizer | None = None) -> list[tuple]:
    """Character spans `(start, end)` of every occurrence of any answer in `text`, sorted and without repeats.

    Arguments as for `has_answer`; `text[start:end]` is the matched piece of the original text. Zero-length regex
    matches are not counted.
    """
    return sorted(set(_spans(text, answers, match, tokenizer)))


def _spans(text, answers, match, tokenizer) -> Iterator[tuple[int, int]]:
    if match not in MATCH_TYPES:
        raise ValueError(f"match must be one of {MATCH_TYPES}, got {match!r}; use 'regex' for CuratedTREC patterns.")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}.")
    answers = _answer_list(answers)
    if match == "regex":
        return _regex_spans(text, answers)
    return _string_spans(text, answers, tokenizer)


def _string_spans(text, answers, tokenizer) -> Iterator[tuple[int, int]]:
    index = _text_index(text) if tokenizer is None else _TokenIndex.build(_keyed(tokenizer(text)))
    for answer in answers:
        needle = _answer_keys(answer) if tokenizer is None else tuple(key for key, _, _ in _keyed(tokenizer(answer)))
        if needle:  # an answer with no tokens ("", "  ") matches nothing
            yield from index.find(needle)


class _TokenIndex:
    """A text's token keys joined by a separator, so a token sequence is found by one substring search."""

    def __init__(self, joined: str, starts: array, offsets: array):
        self.joined = joined  # _SEP + key_0 + _SEP + key_1 ... + _SEP
        self.starts = starts  # starts[i]: where token i's leading separator sits in `joined`
        self.offsets = offsets  # start_0, end_0, start_1, end_1, ...: the tokens' places in the original text

    @classmethod
    def build(cls, tokens) -> "_TokenIndex":
        starts, offsets, position = array("q"), array("q"), 0
        for key, start, end in tokens:
            starts.append(position)
            offsets.extend((start, end))
            position += len(key) + 1
        return cls(_SEP + _SEP.join(key for key, _, _ in tokens) + _SEP, starts, offsets)

    def find(self, needle: tuple[str, ...]) -> Iterator[tuple[int, int]]:
        """Character spans of every occurrence of the token-key sequence `needle`."""
        target = _SEP + _SEP.join(needle) + _SEP
        found = self.joined.find(target)
        while found >= 0:
            first = bisect_left(self.starts, found)
            last = first + len(needle) - 1
            yield self.offsets[2 * first], self.offsets[2 * last + 1]
            found = self.joined.find(target, found + 1)


def _keyed(tokens) -> tuple:
    """Tokens with their comparison key (NFD, lower case) in place of their text."""
    return tuple((unicodedata.normalize("NFD", token).lower(), start, end) for token, start, end in tokens)


@functools.lru_cache(maxsize=4096)  # a block is often checked for many questions; about 10 KB an entry
def _text_index(text: str) -> _TokenIndex:
    return _TokenIndex.build(_keyed(simple_tokenize(text)))


@functools.lru_cache(maxsize=65536)
def _answer_keys(answer: str) -> tuple[str, ...]:
    return tuple(key for key, _, _ in _keyed(simple_tokenize(answer)))


def _regex_spans(text, patterns) -> Iterator[tuple[int, int]]:
    searched, origin = _nfd_with_origin(text)
    for pattern in patterns:
        for found in compile_answer_pattern(unicodedata.normalize("NFD", pattern)).finditer(searched):
            if found.end() > found.start():
                yield origin[found.start()], origin[found.end() - 1] + 1


def _nfd_with_origin(text: str) -> tuple[str, list[int] | range]:
    """NFD text (character by character) and, for each of its characters, the index it came from in `text`."""
    if unicodedata.is_normalized("NFD", text):
        return text, range(len(text))
    pieces, origin = [], []
    for index, char in enumerate(text):
        piece = unicodedata.normalize("NFD", char)
        pieces.append(piece)
        origin.extend([index] * len(piece))
    return "".join(pieces), origin


# ---------------------------------------------------------------- QA files


def load_qa_file(path, question_field: str = "question", answer_field: str = "answer", match: str = "string",
                 on_error: str = "raise") -> list[dict]:
    """Read a QA file into records `{"question": str, "answers": [str, ...]}` (+ `"id"`, `"gold_doc_id"`).

    Formats: JSON lines (`.jsonl`, and DrQA's `.txt` files: NQ-open, WebQuestions, CuratedTREC, SQuAD), a JSON
    array of such objects, or SQuAD v1.1 JSON (`{"data": [{"paragraphs": [{"context", "qas"}]}]}`). A record's `id`
    is kept when present; its gold passage (`passage_id` or `gold_doc_id`; for SQuAD JSON the 0-based paragraph
    number over the whole file) becomes `gold_doc_id`, as a string, like `load_corpus`'s doc ids.

    Args:
        path: the file.
        question_field, answer_field (`str`): the record's names for the question and its answer list (a single
            answer string is accepted too).
        match (`str`): "regex" also compiles every answer pattern, so a bad pattern is reported here with its line.
        on_error (`str`): "raise" stops at the first bad record (empty question, no answers, bad JSON, bad pattern)
            with a ValueError naming the file and line; "skip" drops bad records and logs how many.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if match not in MATCH_TYPES:
        raise ValueError(f"match must be one of {MATCH_TYPES}, got {match!r}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No QA file at {path}; check the path (JSON lines with 'question' and 'answer', or "
                                "SQuAD v1.1 JSON).")
    records, bad = [], []
    for location, raw, problem in _raw_records(path, question_field, answer_field):
        record = None
        if problem is None:
            record, problem = _check_record(raw, question_field, answer_field, match)
        if problem is None:
            records.append(record)
            continue
        if on_error == "raise":
            raise ValueError(f"{path}, {location}: {problem}. {SKIP_HINT}")
        bad.append(location)
    if bad:
        logger.warning("%s: skipped %d bad record(s) of %d (first: %s).", path, len(bad), len(bad) + len(records),
                       ", ".join(bad[:5]))
    if not records:
        raise ValueError(f"{path}: no usable QA records; check that it is a QA file with fields {question_field!r} "
                         f"and {answer_field!r}.")
    return records


def _check_record(raw, question_field, answer_field, match) -> tuple[dict | None, str | None]:
    """The normalised record, or None and what is wrong with it (including how to fix it)."""
    if not isinstance(raw, dict):
        return None, f"expected a JSON object, got {type(raw).__name__}"
    for name, option in ((question_field, "question_field"), (answer_field, "answer_field")):
        if name not in raw:
            return None, f"no field {name!r} (fields: {sorted(raw)}); pass {option}=<the right field name>"
    question, answers = raw[question_field], raw[answer_field]
    if not isinstance(question, str) or is_blank(question):
        return None, f"empty or non-string question {question!r}"
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers:
        return None, f"field {answer_field!r} must be a non-empty list of answer strings, got {answers!r}"
    if not all(isinstance(answer, str) and not is_blank(answer) for answer in answers):
        return None, f"field {answer_field!r} holds an empty or non-string answer: {answers!r}"
    if match == "regex":
        for pattern in answers:
            try:
                compile_answer_pattern(pattern)
            except ValueError as error:
                return None, f"answer pattern {pattern!r} does not compile ({error.__cause__})"
    record = {"question": question, "answers": list(answers)}
    if raw.get("id") is not None:
        record["id"] = raw["id"]
    gold = raw.get("gold_doc_id", raw.get("passage_id"))
    if gold is not None:
        record["gold_doc_id"] = str(gold)
    return record, None


def _raw_records(path: Path, question_field: str, answer_field: str) -> Iterator[tuple[str, object, str | None]]:
    """(location, parsed record or None, problem or None) for each record of a QA file."""
    if path.suffix.lower() == ".json":
        with open(path, encoding="utf-8-sig") as file:
            try:
                data = json.load(file)
            except json.JSONDecodeError:
                data = None  # not one JSON document: read it as JSON lines below
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            yield from _squad_records(path, data["data"], question_field, answer_field)
            return
        if isinstance(data, list):
            for number, item in enumerate(data):
                yield f"item {number}", item, None
            return
        if data is not None:
            yield "top level", None, "expected SQuAD JSON ({'data': [...]}), a JSON array or JSON lines"
            return
    yield from _jsonl_records(path)


def _jsonl_records(path: Path) -> Iterator[tuple[str, object, str | None]]:
    for number, record, problem in jsonl_values(path):
        yield f"line {number}", record, problem


def _squad_records(path: Path, articles: list, question_field: str, answer_field: str):
    """SQuAD v1.1 questions as flat records; a question's gold document is its paragraph's number in the file."""
    paragraph_number = 0
    for article_number, article in enumerate(articles):
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            qas = paragraph.get("qas", []) if isinstance(paragraph, dict) else []
            for qa_number, qa in enumerate(qas):
                location = f"data[{article_number}], paragraph {paragraph_number}, qas[{qa_number}]"
                if not isinstance(qa, dict):
                    yield location, None, f"expected a JSON object, got {type(qa).__name__}"
                    continue
                answers = [answer.get("text") for answer in qa.get("answers", []) if isinstance(answer, dict)]
                yield location, {question_field: qa.get("question"), answer_field: answers, "id": qa.get("id"),
                                 "gold_doc_id": paragraph_number}, None
            paragraph_number += 1
