"""The lexical part of a BlockIndex (BM25) and hybrid search: scores, modes, fusion, persistence, edits, bad input."""

import json
import os
import threading

import bm25s
import numpy as np
import pytest

from index_builder import BlockIndex, IndexMismatchError
from index_builder.index.fusion import RRF_K, fuse, resolve_mode
from index_builder.index.lexical import LexicalIndex, LexicalSettings, NoIndexedTermError, terms_of

TEXTS = ["The cat sat on the mat near the door.", "Dogs and cats living together in Paris.",
         "A quick brown fox jumps over the lazy dog.", "The mat was red, red and red again.",
         "Paris is the capital of France; café culture thrives there.", "Violins and cellos play in the orchestra.",
         "The harbour of Marseille welcomes ships.", "Glaciers carve valleys over thousands of years."]
DIM = 8
NUM_TEXTS = len(TEXTS)


def embeddings(n=NUM_TEXTS, seed=0):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def lexical_index(**kwargs):
    return BlockIndex.from_arrays(embeddings(), TEXTS, titles=[f"Title {i}" for i in range(len(TEXTS))],
                                  progress=False, lexical="bm25", **kwargs)


def bm25s_scores(texts, query, stopwords="en"):
    reference = bm25s.BM25()
    reference.index(bm25s.tokenize(texts, stopwords=stopwords, show_progress=False), show_progress=False)
    return reference.get_scores(bm25s.tokenize([query], stopwords=stopwords, return_ids=False,
                                               show_progress=False)[0])


@pytest.mark.parametrize("stopwords", ["en", None])
def test_bm25_scores_and_terms_equal_bm25s(stopwords):
    settings = LexicalSettings(stopwords=stopwords)
    index = LexicalIndex.build([TEXTS[:3], TEXTS[3:]], len(TEXTS), settings, "0" * 32, progress=False)
    for query in ["red mat cat", "Paris France café", "the dog and the fox", "orchestra violins violins"]:
        terms = terms_of([query], settings)[0]
        assert terms == bm25s.tokenize([query], stopwords=stopwords or [], return_ids=False, show_progress=False)[0]
        rows, scores = index.scores_of(terms)
        dense = np.zeros(len(TEXTS), np.float32)
        dense[rows] = scores
        np.testing.assert_allclose(dense, bm25s_scores(TEXTS, query, stopwords or []), rtol=1e-6, atol=1e-7)


def test_lexical_search_ranks_by_bm25_and_completes_k_with_unmatched_blocks():
    index = lexical_index()
    scores, ids = index.search(query_texts=["red mat", "glaciers"], k=3)
    assert ids[0, 0] == 3 and ids[0, 1] == 0  # "red" three times, then "mat" alone
    assert scores[0, 0] > scores[0, 1] > 0
    assert ids[1, 0] == 7 and scores[1, 0] > 0 and (scores[1, 1:] == 0).all()  # one match; the rest fill k
    assert len(set(ids[1].tolist())) == 3


def test_a_query_without_indexed_terms_is_refused_in_lexical_mode_and_dense_in_hybrid():
    index = lexical_index()
    with pytest.raises(NoIndexedTermError, match="no term that occurs.*mode='dense' or 'hybrid'"):
        index.search(query_texts=["zzyzx qwerty"], k=2)
    query = embeddings(1, seed=5)
    _, hybrid = index.search(query, 3, query_texts=["zzyzx qwerty"], mode="hybrid")
    _, dense = index.search(query, 3)
    np.testing.assert_array_equal(hybrid, dense)


def test_default_mode_follows_what_is_given():
    assert resolve_mode(None, True, True, True) == "hybrid"
    assert resolve_mode(None, True, False, True) == "lexical"
    assert resolve_mode(None, True, True, False) == "dense"
    assert resolve_mode(None, False, True, True) == "dense"
    index = lexical_index()
    query = embeddings(1, seed=3)
    default = index.search(query, 4, query_texts=["Paris"])
    explicit = index.search(query, 4, query_texts=["Paris"], mode="hybrid", fusion="interpolation", weight=0.5)
    np.testing.assert_array_equal(default[1], explicit[1])
    np.testing.assert_allclose(default[0], explicit[0])


def test_rrf_and_interpolation_follow_their_formulas():
    dense_scores, dense_ids = np.array([[0.9, 0.5, 0.1]]), np.array([[10, 11, 12]])
    lexical_scores, lexical_ids = [np.array([4.0, 2.0])], [np.array([12, 13])]
    scores, ids = fuse(dense_scores, dense_ids, lexical_scores, lexical_ids, 4, "rrf", 0.5)
    expected = {10: 0.5 / (RRF_K + 1), 11: 0.5 / (RRF_K + 2), 12: 0.5 / (RRF_K + 3) + 0.5 / (RRF_K + 1),
                13: 0.5 / (RRF_K + 2)}
    assert ids[0].tolist() == [12, 10, 11, 13]  # 11 and 13 tie: the smaller block id first
    np.testing.assert_allclose(scores[0], [expected[i] for i in ids[0]], rtol=1e-6)
    scores, ids = fuse(dense_scores, dense_ids, lexical_scores, lexical_ids, 4, "interpolation", 0.25)
    expected = {10: 0.25, 11: 0.25 * 0.5, 12: 0.0 + 0.75, 13: 0.0}
    assert ids[0].tolist() == [12, 10, 11, 13]
    np.testing.assert_allclose(scores[0], [expected[i] for i in ids[0]], rtol=1e-6, atol=1e-7)
    # weight 1 keeps the dense order, weight 0 the lexical one
    assert fuse(dense_scores, dense_ids, lexical_scores, lexical_ids, 3, "rrf", 1.0)[1][0].tolist() == [10, 11, 12]
    assert fuse(dense_scores, dense_ids, lexical_scores, lexical_ids, 2, "rrf", 0.0)[1][0].tolist() == [12, 13]


@pytest.mark.parametrize("bad, match", [
    (dict(weight=1.5), r"weight .* in \[0, 1\]"), (dict(weight=True), "weight"), (dict(fusion="max"), "fusion"),
    (dict(mode="sparse"), "mode must be one of"), (dict(query_texts=["ok", "  "]), "non-empty strings"),
    (dict(query_texts=["one"]), "1 query texts for 2"), (dict(depth=0), "depth"),
])
def test_bad_hybrid_arguments_are_clear_errors(bad, match):
    index = lexical_index()
    arguments = {"query_texts": ["red mat", "Paris"], "mode": "hybrid", **bad}
    with pytest.raises(ValueError, match=match):
        index.search(embeddings(2, seed=1), 3, **arguments)


def test_a_mode_the_index_cannot_serve_names_the_fix():
    dense_only = BlockIndex.from_arrays(embeddings(), TEXTS, progress=False)
    for mode in ("lexical", "hybrid"):
        with pytest.raises(ValueError, match="add_lexical.*--lexical bm25"):
            dense_only.search(embeddings(1), 2, query_texts=["cat"], mode=mode)
    with pytest.raises(ValueError, match="pass query_texts"):
        lexical_index().search(embeddings(1), 2, mode="lexical")
    with pytest.raises(ValueError, match="pass query_embeddings"):
        lexical_index().search(k=2, query_texts=["cat"], mode="hybrid")


def test_save_and_load_keep_the_lexical_part(tmp_path):
    index = lexical_index()
    index.save_to_disk(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["lexical"]["method"] == "bm25"
    assert {"bm25/terms.arrow", "bm25/indptr.npy", "bm25/rows.npy", "bm25/weights.npy"} <= set(manifest["files"])
    loaded = BlockIndex.load_from_disk(tmp_path / "index")
    assert loaded.has_lexical
    query, texts = embeddings(2, seed=2), ["red mat", "harbour ships"]
    for mode in ("lexical", "hybrid", "dense"):
        expected = index.search(query, 4, query_texts=texts, mode=mode)
        found = loaded.search(query, 4, query_texts=texts, mode=mode)
        np.testing.assert_array_equal(found[1], expected[1])
        np.testing.assert_allclose(found[0], expected[0], rtol=1e-6)


def test_a_dense_index_gains_a_lexical_part_in_place_without_rewriting_its_blocks(tmp_path):
    BlockIndex.from_arrays(embeddings(), TEXTS, progress=False).save_to_disk(tmp_path / "index")
    blocks_file = tmp_path / "index" / "blocks.arrow"
    before = (os.stat(blocks_file).st_ino, os.stat(blocks_file).st_mtime_ns)
    loaded = BlockIndex.load_from_disk(tmp_path / "index")
    loaded.add_lexical(save=True, progress=False, stopwords=None)
    assert (os.stat(blocks_file).st_ino, os.stat(blocks_file).st_mtime_ns) == before
    reloaded = BlockIndex.load_from_disk(tmp_path / "index")  # checksums of every file, the new ones included
    assert reloaded.manifest.lexical["stopwords"] is None
    np.testing.assert_array_equal(reloaded.search(query_texts=["the glaciers"], k=1)[1], [[7]])
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["blocks.arrow", "bm25", "index.faiss",
                                                                       "manifest.json"]


def test_add_lexical_with_save_needs_a_directory():
    with pytest.raises(ValueError, match="save_to_disk"):
        BlockIndex.from_arrays(embeddings(), TEXTS, progress=False).add_lexical(save=True, progress=False)


def test_edits_rebuild_the_lexical_part():
    index = lexical_index()
    new = index.add(embeddings(1, seed=9), ["A lighthouse guards the harbour."])
    assert index.search(query_texts=["lighthouse"], k=1)[1][0, 0] == new[0]
    index.remove([6])  # the other harbour block
    _, ids = index.search(query_texts=["harbour"], k=2)
    assert ids[0, 0] == new[0] and 6 not in ids[0].tolist()
    assert index.manifest.lexical["num_blocks"] == len(index)


def test_build_streams_a_lexical_part_into_the_directory(tmp_path):
    import datasets

    blocks = datasets.Dataset.from_dict({"block_id": list(range(len(TEXTS))), "doc_id": [str(i) for i in
                                         range(len(TEXTS))], "title": [""] * len(TEXTS), "text": TEXTS})
    built = BlockIndex.build(blocks, embeddings(), tmp_path / "built", progress=False,
                             lexical=LexicalSettings(k1=1.2, b=0.5))
    assert built.manifest.lexical["k1"] == 1.2 and built.has_lexical
    np.testing.assert_array_equal(built.search(query_texts=["orchestra"], k=1)[1], [[5]])


@pytest.mark.parametrize("settings, match", [(dict(b=1.5), "b is 1.5"), (dict(k1=-1), "k1 is -1"),
                                             (dict(stopwords="klingon"), "stopwords is 'klingon'"),
                                             (dict(stemmer="../x"), "stemmer is")])
def test_bad_lexical_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        LexicalSettings(**settings)


def test_a_corpus_without_indexable_terms_is_refused():
    with pytest.raises(ValueError, match="None of the 2 blocks has a term"):
        BlockIndex.from_arrays(embeddings(2), ["a I", "the of"], progress=False, lexical="bm25")


def test_concurrent_hybrid_searches_and_edits_stay_consistent():
    index = lexical_index()
    errors, query = [], embeddings(1, seed=4)

    def search():
        try:
            for _ in range(30):
                scores, ids = index.search(query, 3, query_texts=["red mat"])
                assert ids.shape == (1, 3) and np.isfinite(scores).all()
        except Exception as error:  # collected and re-raised below
            errors.append(error)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(5):
        index.add(embeddings(1, seed=20 + i), [f"red mat number {i}"])
    for thread in threads:
        thread.join()
    assert not errors
    assert index.manifest.lexical["num_blocks"] == len(TEXTS) + 5


# ----------------------------------------------------------------- hostile or damaged lexical parts
def saved(tmp_path, name="index", texts=TEXTS):
    index = BlockIndex.from_arrays(embeddings(len(texts)), texts, progress=False, lexical="bm25")
    index.save_to_disk(tmp_path / name)
    return tmp_path / name


def edit_manifest(directory, edit):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def replace_file(directory, name, data: bytes):
    """Replace a listed file and record its new size and checksum, so only the content checks can object."""
    import xxhash

    (directory / name).write_bytes(data)

    def record(manifest):
        manifest["files"][name] = {"bytes": len(data), "xxh3_64": xxhash.xxh3_64(data).hexdigest()}
    edit_manifest(directory, record)


def npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype == object)
    return buffer.getvalue()


class WritesAFile:
    """Unpickling this would create a marker file: the loader must never unpickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["lexical"].update(blocks_digest="0" * 32), "built over other blocks"),
    (lambda m: m["files"].pop("bm25/rows.npy"), r"lexical part's files \['bm25/rows.npy'\] are not listed"),
    (lambda m: m["lexical"].update(num_blocks=3), "covers 3 blocks"),
    (lambda m: m["lexical"].update(stopwords="klingon"), "cannot serve.*klingon"),
    (lambda m: m["lexical"].update(k1="1.5"), r"lexical\['k1'\]"),
    (lambda m: m.update(format_version=1), "format_version 2"),
    (lambda m: m["lexical"].update(num_terms=3), "terms"),
])
def test_a_manifest_that_misdescribes_the_lexical_part_is_refused(tmp_path, edit, match):
    directory = saved(tmp_path)
    edit_manifest(directory, edit)
    with pytest.raises(IndexMismatchError, match=match):
        BlockIndex.load_from_disk(directory)


def test_a_lexical_part_copied_from_another_index_is_refused(tmp_path):
    import shutil

    ours, theirs = saved(tmp_path, "ours"), saved(tmp_path, "theirs", texts=TEXTS[::-1])
    shutil.rmtree(ours / "bm25")
    shutil.copytree(theirs / "bm25", ours / "bm25")
    other = json.loads((theirs / "manifest.json").read_text())

    def graft(manifest):
        manifest["lexical"] = other["lexical"]
        manifest["files"].update({name: entry for name, entry in other["files"].items() if name.startswith("bm25/")})
    edit_manifest(ours, graft)
    with pytest.raises(IndexMismatchError, match="built over other blocks"):
        BlockIndex.load_from_disk(ours)


def test_a_pickled_npy_is_refused_and_never_unpickled(tmp_path):
    directory = saved(tmp_path)
    marker = tmp_path / "unpickled"
    replace_file(directory, "bm25/rows.npy", npy_bytes(np.array([WritesAFile(str(marker))], dtype=object)))
    with pytest.raises(IndexMismatchError, match="rows.npy is not a 1-d int32 .npy array"):
        BlockIndex.load_from_disk(directory)
    assert not marker.exists()


@pytest.mark.parametrize("name, array, match", [
    ("bm25/indptr.npy", "reversed", "offsets do not run from 0"),
    ("bm25/rows.npy", np.zeros(3, np.int64), "not a 1-d int32"),
])
def test_inconsistent_postings_files_are_refused_at_load(tmp_path, name, array, match):
    directory = saved(tmp_path)
    if isinstance(array, str):
        array = np.load(directory / name)[::-1].copy()
    replace_file(directory, name, npy_bytes(array))
    with pytest.raises(IndexMismatchError, match=match):
        BlockIndex.load_from_disk(directory)


def test_an_unsorted_vocabulary_is_refused_at_load(tmp_path):
    import pyarrow as pa

    directory = saved(tmp_path)
    with pa.ipc.open_stream(pa.memory_map(str(directory / "bm25/terms.arrow"))) as reader:
        terms = reader.read_all().column("term").to_pylist()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("term", pa.string())])) as writer:
        writer.write_batch(pa.record_batch([pa.array(terms[::-1])], names=["term"]))
    replace_file(directory, "bm25/terms.arrow", sink.getvalue().to_pybytes())
    with pytest.raises(IndexMismatchError, match="vocabulary is not sorted"):
        BlockIndex.load_from_disk(directory)


@pytest.mark.parametrize("name, damage, match", [
    ("bm25/rows.npy", lambda a: np.full_like(a, 10**6), "rows outside its 8 blocks"),
    ("bm25/weights.npy", lambda a: np.full_like(a, np.nan), "NaN or infinite weights"),
])
def test_postings_that_point_outside_or_hold_nan_fail_the_search_not_the_process(tmp_path, name, damage, match):
    directory = saved(tmp_path)
    replace_file(directory, name, npy_bytes(damage(np.load(directory / name))))
    index = BlockIndex.load_from_disk(directory)
    with pytest.raises(IndexMismatchError, match=match):
        index.search(query_texts=["red mat"], k=2)


def test_stemming_matches_word_forms_as_bm25s_does():
    pytest.importorskip("Stemmer", reason="PyStemmer (the realm-hf[stem] extra) is not installed")
    import Stemmer

    settings = LexicalSettings(stemmer="english")
    texts = ["The runner was running races.", "A quiet library of books.", "Glaciers carved the valleys."]
    index = BlockIndex.from_arrays(embeddings(3), texts, progress=False, lexical=settings)
    np.testing.assert_array_equal(index.search(query_texts=["runs", "carving glacier"], k=1)[1], [[0], [2]])
    stem = Stemmer.Stemmer("english").stemWords
    assert terms_of(["running races"], settings)[0] == bm25s.tokenize(
        ["running races"], stemmer=stem, return_ids=False, show_progress=False)[0]
    with pytest.raises(ValueError, match="no stemmer 'klingon'"):
        BlockIndex.from_arrays(embeddings(3), texts, progress=False, lexical={"stemmer": "klingon"})
