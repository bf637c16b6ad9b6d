"""Salient spans (named entities and dates) for REALM's salient span masking.

REALM (Guu et al., 2020, section 3.4) masks salient spans: named entities, found with an NER tagger, and dates,
found with a regular expression; one span per sentence is chosen at random. Two backends find the candidates:

- `"spacy"`: the named entities of a spaCy English pipeline (the `ner` extra plus a model:
  `pip install 'realm-hf[ner]'` and `python -m spacy download en_core_web_sm`; any installed `en_core_web_*`
  works), keeping the labels of `SPACY_ENTITY_LABELS`, plus the dates of the regular expression below.
- `"regex"`: a dependency-free **heuristic**. Dates by regular expression: years 1000-2099, year ranges
  ("1914-1918"), decades ("1990s"), "12 March 1901", "March 12, 1901", "March 1901", "12 March", ISO dates and
  month names (bare "May" excepted: it is mostly the verb). Entities: runs of capitalised words ("New York",
  "University of Cambridge", "J. R. R. Tolkien"), where the first word of a sentence counts only when the run goes
  on past it with another capitalised word and it is not a function word ("The", "In"...): a lone capitalised
  word at the start of a sentence ("Paris is large.") is missed, and "Bank of England opened." gives "England".
  Numbers ("42", "3.5", "1,200") are candidates too. It finds far more false positives than a tagger; use spaCy
  for real pretraining.

`"auto"` (the default) takes spaCy when it and an English model can be loaded, the heuristic otherwise, and logs
which. Overlaps are resolved by priority: dates, then entities, then numbers. Sentences always come from
`tokenization.sentences.sentence_spans` (the splitter that cut the blocks), whatever the backend, so the
one-span-per-sentence choice is the same for both; a candidate that crosses a sentence boundary is never chosen.
"""

import functools
import logging
import random
import re

import numpy as np

from tokenization.sentences import ABBREVIATIONS, sentence_spans

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "spacy", "regex")
# spaCy (OntoNotes) labels that name an entity; DATE is left to the regular expression as in REALM, and the
# numeric labels (CARDINAL, ORDINAL, QUANTITY, MONEY, PERCENT, TIME) are left out.
SPACY_ENTITY_LABELS = frozenset(
    {"PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"}
)
MISSING_SPACY = ("Salient spans with backend='spacy' need spaCy and an English model: "
                 "pip install 'realm-hf[ner]' && python -m spacy download en_core_web_sm "
                 "(or pass backend='regex' for the built-in heuristic).")
_PRIORITY = {"DATE": 0, "ENTITY": 1, "NUMBER": 2}

# ---- dates -------------------------------------------------------------------------------------------------------
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_MONTH_ABBREVIATIONS = r"(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?"
_MONTH = rf"(?:{_MONTHS}|{_MONTH_ABBREVIATIONS})"
_DAY = r"(?:3[01]|[12]\d|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1\d{3}|20\d{2})"
_DATE_FORMS = [
    rf"{_DAY}(?:\s+of)?\s+{_MONTH},?\s+{_YEAR}",  # 12 March 1901, 12th of March, 1901
    rf"{_MONTH}\s+{_DAY},?\s+{_YEAR}",  # March 12, 1901
    rf"{_YEAR}-(?:0[1-9]|1[0-2])-(?:3[01]|[12]\d|0[1-9])",  # 1901-03-12
    rf"{_DAY}(?:\s+of)?\s+{_MONTH}",  # 12 March
    rf"{_MONTH}\s+{_DAY}(?![\d,.]*\d)",  # March 12
    rf"{_MONTH},?\s+{_YEAR}",  # March 1901
    rf"{_YEAR}\s*[-\u2013]\s*(?:{_YEAR}|\d\d)",  # 1914-1918, 1914-18
    r"(?:1\d|20)\d0['\u2019]?s",  # 1990s
    _YEAR,
    r"(?:January|February|March|April|June|July|August|September|October|November|December)",  # not May
]
# Not inside a longer number or word, not after a currency sign, not followed by ",5" or ".5".
DATE_PATTERN = re.compile(r"(?<![\w$\u00a3\u20ac])(?<!\d[.,])(?:" + "|".join(_DATE_FORMS) + r")(?!\w)(?![.,]\d)")

# ---- entities and numbers ----------------------------------------------------------------------------------------
_WORD = re.compile(r"(?:[^\W\d_]\.){2,}|[^\W_]+(?:['\u2019\-&][^\W_]+)*\.?")
_POSSESSIVE = re.compile(r"['\u2019]s$")
NUMBER_PATTERN = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*(?![\w])(?![.,]\d)")
# Lower-case words allowed inside a capitalised run ("Bank of England", "Leonardo da Vinci").
CONNECTORS = frozenset("of the de da del della der den van von du la le y al bin".split())
# Capitalised words that start sentences without naming anything.
FUNCTION_WORDS = frozenset(
    """a an the this that these those there then in on at by for from to of with without after before during
    since until when while where what which who whom whose why how if as but and or nor so yet it its he she
    they we you i his her their our my your our many most some all no not one each every both either neither
    also however although though because once here today yesterday tomorrow""".split()
)


def find_salient_spans(text: str, backend: str = "auto", spacy_model: str | None = None,
                       nlp=None) -> list[tuple[int, int, str]]:
    """Candidate salient spans of `text`: `(start_char, end_char, label)`, sorted and non-overlapping.

    Args:
        text (`str`): a block or a query.
        backend (`str`): `"auto"`, `"spacy"` or `"regex"` (see the module docstring).
        spacy_model (`str`, *optional*): the spaCy pipeline to load (default: `en_core_web_sm`, else any installed
            `en_core_web_*`).
        nlp (*optional*): an already loaded spaCy pipeline (anything whose call returns an object with `.ents`,
            each with `start_char`, `end_char` and `label_`); implies the spaCy backend.

    Returns:
        `list[tuple[int, int, str]]`: labels are `"DATE"` plus the spaCy entity label, or `"DATE"`, `"ENTITY"`
        and `"NUMBER"` for the heuristic.
    """
    if nlp is None:
        nlp = resolve_backend(backend, spacy_model)
    if nlp is None:
        return _merge(regex_dates(text) + regex_entities(text) + regex_numbers(text))
    return _merge(regex_dates(text) + spacy_entities(nlp(text)))


def find_salient_spans_batch(texts: list[str], backend: str = "auto", spacy_model: str | None = None,
                             nlp=None) -> list[list[tuple[int, int, str]]]:
    """`find_salient_spans` for many texts (spaCy's `nlp.pipe` batches them when it is the backend)."""
    if nlp is None:
        nlp = resolve_backend(backend, spacy_model)
    if nlp is None:
        return [find_salient_spans(text, backend="regex") for text in texts]
    docs = nlp.pipe(texts) if hasattr(nlp, "pipe") else map(nlp, texts)
    return [_merge(regex_dates(text) + spacy_entities(doc)) for text, doc in zip(texts, docs)]


def salient_spans_per_sentence(text: str, rng=None, spans=None, backend: str = "auto",
                               spacy_model: str | None = None) -> list[tuple[int, int]]:
    """One salient span per sentence of `text`, chosen uniformly at random among the sentence's candidates.

    Args:
        text (`str`): the text the spans index into.
        rng (`int`, `numpy.random.Generator` or `random.Random`, *optional*): the source of randomness; an int
            seeds one. None draws fresh, non-reproducible randomness.
        spans (*optional*): candidate spans, `(start, end)` or `(start, end, label)` (e.g. the `salient_spans`
            column of `add_salient_spans`); found with `find_salient_spans(text, backend, spacy_model)` if None.

    Returns:
        `list[tuple[int, int]]`: sorted, one span for every sentence that contains at least one whole candidate.
    """
    rng = as_generator(rng)
    if spans is None:
        spans = find_salient_spans(text, backend=backend, spacy_model=spacy_model)
    candidates = sorted((int(span[0]), int(span[1])) for span in spans)
    chosen = []
    for sentence_start, sentence_end in sentence_spans(text):
        inside = [span for span in candidates if sentence_start <= span[0] and span[1] <= sentence_end]
        if inside:
            chosen.append(inside[int(rng.integers(len(inside)))])
    return chosen


def as_generator(rng) -> np.random.Generator:
    """A `numpy.random.Generator` from an int seed, a Generator, a `random.Random` or None."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    raise TypeError(f"rng must be an int seed, a numpy.random.Generator or a random.Random, got "
                    f"{type(rng).__name__}; pass e.g. rng=0.")


# ---- backends ----------------------------------------------------------------------------------------------------
def resolve_backend(backend: str = "auto", spacy_model: str | None = None):
    """The spaCy pipeline the backend uses, or None for the regular-expression heuristic."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}; pass 'auto', 'spacy' or 'regex'.")
    if backend == "regex":
        return None
    if backend == "spacy":
        return load_spacy_model(spacy_model)
    return _auto_backend(spacy_model)


@functools.cache
def _auto_backend(spacy_model: str | None):
    try:
        nlp = load_spacy_model(spacy_model)
    except ImportError as error:
        logger.info("Salient spans use the regular-expression heuristic (%s)", error)
        return None
    logger.info("Salient spans use spaCy pipeline %s.", getattr(nlp, "meta", {}).get("name", spacy_model))
    return nlp


@functools.lru_cache(maxsize=4)
def load_spacy_model(name: str | None = None):
    """Load (once per process) a spaCy English pipeline: `name`, or `en_core_web_sm`, or any `en_core_web_*`.

    Raises:
        ImportError: spaCy or the model is not installed; the message says what to install.
    """
    try:
        import spacy
    except ImportError as error:
        raise ImportError(MISSING_SPACY) from error
    if name is None:
        installed = sorted(model for model in spacy.util.get_installed_models() if model.startswith("en_core_web_"))
        if not installed:
            raise ImportError(MISSING_SPACY)
        name = "en_core_web_sm" if "en_core_web_sm" in installed else installed[0]
    try:
        nlp = spacy.load(name)
    except OSError as error:
        raise ImportError(f"spaCy could not load the pipeline {name!r}: python -m spacy download {name} "
                          f"(or pass spacy_model=None to use any installed en_core_web_* model).") from error
    # The parser and lemmatizer feed nothing the entity recognizer needs.
    nlp.select_pipes(disable=[pipe for pipe in ("parser", "lemmatizer") if pipe in nlp.pipe_names])
    return nlp


def spacy_entities(doc) -> list[tuple[int, int, str]]:
    """The entities of a spaCy `Doc` whose label is in `SPACY_ENTITY_LABELS`."""
    return [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents if ent.label_ in SPACY_ENTITY_LABELS]


# ---- the heuristic -----------------------------------------------------------------------------------------------
def regex_dates(text: str) -> list[tuple[int, int, str]]:
    """Dates found by `DATE_PATTERN`, trailing periods of month abbreviations dropped."""
    spans = []
    for match in DATE_PATTERN.finditer(text):
        end = match.end() - 1 if match.group().endswith(".") else match.end()
        spans.append((match.start(), end, "DATE"))
    return spans


def regex_numbers(text: str) -> list[tuple[int, int, str]]:
    return [(match.start(), match.end(), "NUMBER") for match in NUMBER_PATTERN.finditer(text)]


def regex_entities(text: str) -> list[tuple[int, int, str]]:
    """Runs of capitalised words (see the module docstring), sentence by sentence."""
    spans = []
    for sentence_start, sentence_end in sentence_spans(text):
        words = [_word_span(text, match) for match in _WORD.finditer(text, sentence_start, sentence_end)]
        spans.extend(_capitalised_runs(text, words))
    return spans


def _word_span(text: str, match) -> tuple[int, int, int]:
    """`(start, end, matched_end)` of a word: `end` drops a trailing period (unless the word is an abbreviation or an
    initial) and a possessive 's; `matched_end` keeps them, so "Levi's Stadium" still reads as one run."""
    start, end = match.span()
    word = match.group()
    if word.endswith(".") and not (word.lower() in ABBREVIATIONS or len(word) == 2 or word.count(".") > 1):
        end -= 1
    possessive = _POSSESSIVE.search(text, start, end)
    if possessive and possessive.start() > start:
        end = possessive.start()
    return start, end, match.end()


def _capitalised_runs(text: str, words: list[tuple[int, int, int]]) -> list[tuple[int, int, str]]:
    """Runs of capitalised words, joined by whitespace or by lower-case `CONNECTORS` between capitalised words."""
    runs, current, pending = [], [], []
    for index, (start, end, _) in enumerate(words):
        word = text[start:end]
        adjacent = index > 0 and not text[words[index - 1][2]:start].strip()
        if word[0].isupper() and word != "I":
            if not (current and adjacent):
                runs.append(current)
                current, pending = [], []
            current += pending + [(start, end)]
            pending = []
        elif current and adjacent and word.lower() in CONNECTORS:
            pending.append((start, end))
        else:
            runs.append(current)
            current, pending = [], []
    runs.append(current)
    first_word = words[0][:2] if words else None
    return [span for run in runs if run for span in _run_span(text, run, first_word)]


def _run_span(text: str, run: list[tuple[int, int]], first_word) -> list[tuple[int, int, str]]:
    """The entity of a run. A sentence-initial word is dropped (with the connectors after it) unless another
    capitalised word follows it directly and it is not a function word: "New York" stays, "The Beatles" and
    "Students of the University" lose their first words."""
    if run[0] == first_word:
        first = text[run[0][0]:run[0][1]]
        if len(run) == 1 or first.lower() in FUNCTION_WORDS or not text[run[1][0]].isupper():
            run = run[1:]
            while run and not text[run[0][0]].isupper():
                run = run[1:]
    return [(run[0][0], run[-1][1], "ENTITY")] if run else []


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping spans, sorted by start; on overlap the higher-priority label wins, then the longer span."""
    ranked = sorted(spans, key=lambda span: (_PRIORITY.get(span[2], 1), span[0] - span[1], span[0]))
    kept = []
    for span in ranked:
        if span[1] > span[0] and all(span[1] <= other[0] or other[1] <= span[0] for other in kept):
            kept.append(span)
    return sorted(kept)


# ---- caching with the blocks -------------------------------------------------------------------------------------
def add_salient_spans(blocks, num_proc: int | None = None, backend: str = "auto", spacy_model: str | None = None,
                      text_column: str = "text", batch_size: int = 256):
    """Add a `salient_spans` column to `blocks`: every candidate span of each block's text, found once.

    The spans are stored with the blocks (`save_to_disk`, a `BlockIndex`...) so pretraining never runs NER again;
    the one-span-per-sentence choice is made at masking time (`make_masked_batch(..., spans=...)`), so every epoch
    can mask a different span of the same sentence.

    Args:
        blocks (`datasets.Dataset`): with a string column `text_column` (the `split_into_blocks` output).
        num_proc (`int`, *optional*): worker processes for `datasets.map`; the result is the same for any value.
        backend, spacy_model: as in `find_salient_spans`; `"auto"` is resolved once, here, so every worker uses the
            same backend.
        text_column (`str`): the column the spans index into.
        batch_size (`int`): texts per `datasets.map` batch (and per `nlp.pipe` call).

    Returns:
        `datasets.Dataset`: `blocks` plus `salient_spans`, a list of `[start_char, end_char]` per row (int32),
        sorted and non-overlapping; an existing `salient_spans` column is replaced.
    """
    from datasets import Dataset, List, Value

    if not isinstance(blocks, Dataset):
        raise TypeError(f"blocks must be a datasets.Dataset, got {type(blocks).__name__}; build it with "
                        "tokenization.split_into_blocks(corpus, tokenizer).")
    if text_column not in blocks.column_names:
        raise ValueError(f"blocks has no {text_column!r} column (columns: {blocks.column_names}); pass "
                         "text_column=<the column holding the block text>.")
    nlp = resolve_backend(backend, spacy_model)
    backend = "regex" if nlp is None else "spacy"
    features = blocks.features.copy()
    features["salient_spans"] = List(List(Value("int32"), length=2))
    return blocks.map(
        _spans_of_batch, batched=True, batch_size=batch_size, num_proc=num_proc, features=features,
        fn_kwargs={"text_column": text_column, "backend": backend, "spacy_model": spacy_model},
        desc=f"Finding salient spans ({backend})",
    )


def _spans_of_batch(batch: dict, text_column: str, backend: str, spacy_model: str | None) -> dict:
    spans = find_salient_spans_batch(batch[text_column], backend=backend, spacy_model=spacy_model)
    return {"salient_spans": [[[start, end] for start, end, _ in row] for row in spans]}
