"""Answer matching (normalisation, EM, F1, CuratedTREC regex, answers in blocks) and the QA file loader."""

import json
import logging

import pytest

from modeling_realm.openqa import exact_match, f1_score, has_answer, load_qa_file, normalize_answer, regex_match
from modeling_realm.openqa.answers import answer_spans, compile_answer_pattern
from tests.helpers import SHARED_DATA

# A real CuratedTREC train pattern (CuratedTrec-train.txt line 701) that ends in a lone backslash.
BROKEN_TREC_PATTERN = (r"RAO|contamination|iodine|nuclear.+polluted|radiation|radioactive|radioactivi?ty|tritium|"
                       r"wastes?|xenon|the French physicist Marie Curie|Sievert \(Sv\)" "\\")


# ---------------------------------------------------------------- normalisation, EM, F1


@pytest.mark.parametrize("raw, normalised", [
    ("The Cat!", "cat"),
    ("  A  man,\ta plan;\nAN   canal  ", "man plan canal"),
    ("theatre of the absurd", "theatre of absurd"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("Denver Broncos", "denver broncos"),
    ("24–10", "24–10"),  # the en dash is not ASCII punctuation, as in SQuAD's script
])
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_normalize_answer_equates_composed_and_decomposed_accents():
    assert normalize_answer("Padm\u00e9") == normalize_answer("Padme\u0301")
    assert normalize_answer("Padm\u00e9") != normalize_answer("Padme")


def test_exact_match_any_reference():
    assert exact_match("the Eiffel Tower.", ["Eiffel tower", "Paris"])
    assert exact_match("PARIS", "paris")
    assert not exact_match("Eiffel Tower in Paris", ["Eiffel tower", "Paris"])


def test_f1_hand_computed():
    # prediction [eiffel, tower, paris] vs gold [eiffel, tower]: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Eiffel Tower Paris", "the eiffel tower") == pytest.approx(0.8)
    # repeated tokens count once each: [red, red, blue] vs [red, blue, blue] share 2 -> P = R = 2/3
    assert f1_score("red red blue", "red blue blue") == pytest.approx(2 / 3)
    # best over the references: 0.0 for "london", 0.8 for the second one
    assert f1_score("Eiffel Tower Paris", ["London", "Eiffel Tower"]) == pytest.approx(0.8)
    assert f1_score("Berlin", ["London"]) == 0.0


def test_f1_with_empty_normalised_text_follows_exact_match():
    assert f1_score("the", "a") == 1.0  # both normalise to "" (exact match holds too)
    assert exact_match("the", "a")
    assert f1_score("the", "cat") == 0.0


def test_answers_must_be_a_non_empty_list_of_strings():
    with pytest.raises(ValueError, match="No reference answers"):
        exact_match("x", [])
    with pytest.raises(TypeError, match="must be strings"):
        f1_score("x", ["a", 3])
    with pytest.raises(TypeError, match="string or a list"):
        exact_match("x", 3)


# ---------------------------------------------------------------- CuratedTREC regex match


@pytest.mark.parametrize("prediction, pattern, expected", [
    ("2,550 feet", r"\b2,?[4567][0-9][0-9]\b", True),  # CuratedTrec-test "How many feet above sea level is Jerusalem?"
    ("about 2,550 feet", r"\b2,?[4567][0-9][0-9]\b", False),  # anchored at the prediction's start (re.match)
    ("2,5500", r"\b2,?[4567][0-9][0-9]\b", False),  # \b after the third digit
    ("September 2012", "Sept?(ember)?|Feb(ruary)?", True),
    ("FEBRUARY", "Sept?(ember)?|Feb(ruary)?", True),  # case-insensitive
    ("Sweden and Norway", "Sweden", True),  # a prefix match is enough, as in ORQA/DrQA
    ("in Sweden", "Sweden", False),
    ("the Fall", "After the Fall|Finishing the Play", False),
    ("After the Fall", "After the Fall|Finishing the Play", True),
])
def test_regex_match_curated_trec_convention(prediction, pattern, expected):
    assert regex_match(prediction, [pattern]) is expected


def test_regex_match_fullmatch_and_several_patterns():
    assert not regex_match("Sweden and Norway", "Sweden", fullmatch=True)
    assert regex_match("september", "Sept?(ember)?", fullmatch=True)
    assert regex_match("Norway", ["Sweden", "Norw(ay|egian)"])


def test_invalid_pattern_raises_naming_it_and_compiles_once():
    with pytest.raises(ValueError, match="Sievert") as caught:
        regex_match("radiation", [BROKEN_TREC_PATTERN])
    assert "on_error='skip'" in str(caught.value)
    compile_answer_pattern.cache_clear()
    for _ in range(3):
        regex_match("Long Island", r"Long Island|New\s?York")
    info = compile_answer_pattern.cache_info()
    assert (info.misses, info.hits) == (1, 2)


# ---------------------------------------------------------------- answers in blocks


def test_has_answer_respects_word_boundaries():
    assert not has_answer("A comparison of European capitals.", ["paris"])
    assert has_answer("Comparison: PARIS, the capital of France.", ["paris"])
    assert has_answer("He moved to New York City.", ["new york"])
    assert not has_answer("He moved to Newyork.", ["new york"])
    assert not has_answer("Tesla was the fourth of five children.", "four")  # the real SQuAD miss (Tesla)


def test_has_answer_token_sequences_with_punctuation_and_accents():
    assert has_answer("the U.S. Army", ["U.S."])
    assert not has_answer("the US Army", ["U.S."])
    assert has_answer("Padme\u0301 Amidala is a character", ["padm\u00e9 amidala"])
    assert not has_answer("anything at all", ["", " \t"])  # no tokens: matches nothing (DPR would say True)


def test_answer_spans_give_character_offsets_of_every_occurrence():
    text = "Paris is in France; PARIS again, and comparison."
    spans = answer_spans(text, ["paris", "France"])
    assert spans == [(0, 5), (12, 18), (20, 25)]
    assert [text[start:end] for start, end in spans] == ["Paris", "France", "PARIS"]
    assert answer_spans(text, "Berlin") == []


def test_answer_spans_regex_maps_back_through_nfd():
    text = "Caf\u00e9 M\u00fcller, 2,550 feet high"  # composed characters: NFD makes the searched text longer
    spans = answer_spans(text, ["m\u00fcller", r"\b2,?[4567][0-9][0-9]\b"], match="regex")
    assert [text[start:end] for start, end in spans] == ["M\u00fcller", "2,550"]
    assert has_answer(text, [r"feet\s+high"], match="regex")  # searched anywhere, unlike regex_match
    assert not has_answer(text, ["Sweden"], match="regex")


def test_has_answer_with_custom_tokenizer():
    def whitespace_tokenizer(text):  # "paris," stays one token, so it no longer matches "paris"
        tokens, position = [], 0
        for word in text.split():
            start = text.index(word, position)
            tokens.append((word, start, start + len(word)))
            position = start + len(word)
        return tokens

    assert has_answer("Paris, France", ["paris"])
    assert not has_answer("Paris, France", ["paris"], tokenizer=whitespace_tokenizer)
    assert answer_spans("in Paris now", ["paris"], tokenizer=whitespace_tokenizer) == [(3, 8)]


def test_has_answer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="match must be one of"):
        has_answer("text", ["a"], match="fuzzy")
    with pytest.raises(ValueError, match="Invalid answer regular expression"):
        has_answer("text", ["(unclosed"], match="regex")
    with pytest.raises(TypeError, match="text must be a string"):
        has_answer(None, ["a"])


# ---------------------------------------------------------------- load_qa_file


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_jsonl_keeps_ids_and_gold_passages(tmp_path):
    path = _write_lines(tmp_path / "qa.jsonl", [
        json.dumps({"question": "who?", "answer": ["Ann", "Anne"]}),
        "",
        json.dumps({"answer": "Bob", "question": "what?", "id": "q2", "passage_id": 7}),
    ])
    assert load_qa_file(path) == [
        {"question": "who?", "answers": ["Ann", "Anne"]},
        {"question": "what?", "answers": ["Bob"], "id": "q2", "gold_doc_id": "7"},
    ]


def test_load_reports_file_line_and_fix(tmp_path):
    path = _write_lines(tmp_path / "qa.jsonl", [json.dumps({"question": "ok?", "answer": ["x"]}),
                                                json.dumps({"question": "  ", "answer": ["x"]})])
    with pytest.raises(ValueError, match=r"qa\.jsonl, line 2: empty or non-string question.*on_error='skip'"):
        load_qa_file(path)
    renamed = _write_lines(tmp_path / "renamed.jsonl", [json.dumps({"query": "ok?", "answers": ["x"]})])
    with pytest.raises(ValueError, match=r"line 1: no field 'question' \(fields: \['answers', 'query'\]\); pass "
                                         "question_field"):
        load_qa_file(renamed)
    assert load_qa_file(renamed, question_field="query", answer_field="answers") == [
        {"question": "ok?", "answers": ["x"]}]


def test_load_skip_logs_count(tmp_path, caplog):
    path = _write_lines(tmp_path / "qa.txt", [
        json.dumps({"question": "a?", "answer": []}),
        "{not json",
        json.dumps({"question": "b?", "answer": ["B"]}),
        json.dumps({"question": "c?", "answer": ["", "C"]}),
    ])
    with pytest.raises(ValueError, match="line 1: field 'answer' must be a non-empty list"):
        load_qa_file(path)
    with caplog.at_level(logging.WARNING, logger="modeling_realm.openqa.answers"):
        records = load_qa_file(path, on_error="skip")
    assert records == [{"question": "b?", "answers": ["B"]}]
    assert "skipped 3 bad record(s) of 4" in caplog.text and "line 2" in caplog.text


def test_load_regex_mode_checks_patterns(tmp_path):
    path = _write_lines(tmp_path / "trec.txt", [json.dumps({"question": "q?", "answer": [r"Swed(en|ish)"]}),
                                                json.dumps({"question": "r?", "answer": [BROKEN_TREC_PATTERN]})])
    assert len(load_qa_file(path)) == 2  # string mode: the patterns are just strings
    with pytest.raises(ValueError, match="line 2: answer pattern .*Sievert.* does not compile"):
        load_qa_file(path, match="regex")
    assert [r["question"] for r in load_qa_file(path, match="regex", on_error="skip")] == ["q?"]


def test_load_squad_json_and_json_array(tmp_path):
    squad = {"data": [
        {"title": "A", "paragraphs": [
            {"context": "c0", "qas": [{"id": "x", "question": "q0?", "answers": [{"text": "t0", "answer_start": 0}]}]},
            {"context": "c1", "qas": [{"id": "y", "question": "q1?", "answers": [{"text": "t1", "answer_start": 0},
                                                                                 {"text": "u1", "answer_start": 1}]}]},
        ]},
        {"title": "B", "paragraphs": [{"context": "c2", "qas": [{"id": "z", "question": "q2?", "answers": []}]}]},
    ]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    with pytest.raises(ValueError, match=r"data\[1\], paragraph 2, qas\[0\]"):
        load_qa_file(path)
    assert load_qa_file(path, on_error="skip") == [
        {"question": "q0?", "answers": ["t0"], "id": "x", "gold_doc_id": "0"},
        {"question": "q1?", "answers": ["t1", "u1"], "id": "y", "gold_doc_id": "1"},
    ]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"question": "q?", "answer": ["a"]}, {"question": "r?"}]))
    with pytest.raises(ValueError, match="item 1: no field 'answer'"):
        load_qa_file(array)


def test_load_missing_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="No QA file at"):
        load_qa_file(tmp_path / "absent.jsonl")
    path = _write_lines(tmp_path / "qa.jsonl", [json.dumps({"question": "q?", "answer": ["a"]})])
    with pytest.raises(ValueError, match="on_error"):
        load_qa_file(path, on_error="ignore")
    with pytest.raises(ValueError, match="match must be"):
        load_qa_file(path, match="fuzzy")


# ---------------------------------------------------------------- the real files in ../shared/data

REAL_FILES = [  # (path under SHARED_DATA, match, expected records); counts from SOURCES.md
    ("nq_open/NQ-open.dev.jsonl", "string", 3610),
    ("nq_open/NQ-open.efficientqa.dev.1.1.jsonl", "string", 1800),
    ("nq_open/NQ-open.efficientqa.test.1.1.jsonl", "string", 1769),
    ("webquestions/WebQuestions-test.txt", "string", 2032),
    ("webquestions/WebQuestions-train.txt", "string", 3778),
    ("webquestions/WebQuestions.resplit.train.jsonl", "string", 3417),
    ("webquestions/WebQuestions.resplit.dev.jsonl", "string", 361),
    ("curatedtrec/CuratedTrec-test.txt", "regex", 694),
    ("curatedtrec/CuratedTrec.resplit.dev.jsonl", "regex", 133),
    ("squad/SQuAD-v1.1-dev.txt", "string", 10570),
    ("squad/squad-dev-v1.1.qa.jsonl", "string", 10570),
    ("squad/dev-v1.1.rebuilt.json", "string", 10570),
]


def _shared(relative):
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data {path} is absent (see ../shared/data/SOURCES.md)")
    return path


@pytest.mark.parametrize("relative, match, expected", REAL_FILES, ids=[row[0] for row in REAL_FILES])
def test_real_qa_file_loads(relative, match, expected):
    records = load_qa_file(_shared(relative), match=match)
    assert len(records) == expected
    assert all(record["question"].strip() and record["answers"] for record in records)


@pytest.mark.parametrize("relative, line, kept", [("curatedtrec/CuratedTrec-train.txt", 701, 1485),
                                                  ("curatedtrec/CuratedTrec.resplit.train.jsonl", 635, 1352)])
def test_real_curated_trec_train_has_one_broken_pattern(relative, line, kept):
    path = _shared(relative)
    with pytest.raises(ValueError, match=f"line {line}: answer pattern"):
        load_qa_file(path, match="regex")
    assert len(load_qa_file(path, match="regex", on_error="skip")) == kept
    assert len(load_qa_file(path)) == kept + 1  # as plain strings every record is fine


def test_real_squad_gold_passages_agree_between_formats():
    lines = load_qa_file(_shared("squad/squad-dev-v1.1.qa.jsonl"))
    rebuilt = load_qa_file(_shared("squad/dev-v1.1.rebuilt.json"))
    assert [(r["id"], r["gold_doc_id"], r["answers"]) for r in lines] == \
        [(r["id"], r["gold_doc_id"], r["answers"]) for r in rebuilt]
    assert len({r["gold_doc_id"] for r in lines}) == 2067
