"""A Flat index scoring in bfloat16 (search parameter `precision`): candidates re-scored in float32, the setting
validated, saved, and dropped with the bfloat16 copy when the index is edited."""

import json

import numpy as np
import pytest

from index_builder import BlockIndex
from index_builder.index import exact
from index_builder.index.exact import candidate_width, gemm_top_k, low_precision_copy
from tests.index_builder.index.test_block_index import clustered, texts_for


def _queries(n: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32)).astype(np.float32)


def test_bfloat16_search_returns_the_float32_ranking_and_scores(monkeypatch):
    monkeypatch.setattr(exact, "GEMM_SCORES_PER_CHUNK", 64 * 37)  # many chunks to merge
    embeddings, _ = clustered(3000)
    index = BlockIndex.from_arrays(embeddings, texts_for(3000), progress=False)
    queries = _queries(64)
    for k in (1, 5, 40):
        scores, ids = index.search(queries, k=k)
        low_scores, low_ids = index.search(queries, k=k, precision="bfloat16")
        np.testing.assert_array_equal(low_ids, ids)
        np.testing.assert_allclose(low_scores, scores, rtol=1e-5, atol=1e-5)  # re-scored in float32
    assert index.manifest.search_params == {}  # a per-call setting is not kept


def test_bfloat16_scores_really_are_rounded_before_the_rescoring():
    """Without the float32 re-scoring the bfloat16 scores differ from float32 ones: the path is not float32."""
    embeddings, _ = clustered(500)
    low = low_precision_copy(embeddings)
    assert str(low.dtype) == "torch.bfloat16" and low.shape == embeddings.shape
    rounded = (_queries(4) @ low.float().numpy().T)
    assert np.abs(rounded - _queries(4) @ embeddings.T).max() > 1e-4


def test_candidates_are_rescored_from_a_list_wider_than_k(monkeypatch):
    seen = []
    real = exact._best_groups
    monkeypatch.setattr(exact, "_best_groups", lambda q, m, width: seen.append((str(m.dtype), width)) or
                        real(q, m, width))
    embeddings, _ = clustered(400)
    scores, rows = gemm_top_k(_queries(3), embeddings, 5, low_precision_copy(embeddings))
    assert seen == [("torch.bfloat16", candidate_width(5, 400))] and candidate_width(5, 400) > 5
    gemm_top_k(_queries(3), embeddings, 5)
    assert seen[1] == ("torch.float32", 5)  # float32 maxima: the k best groups hold the k best rows
    assert rows.shape == (3, 5) and scores.dtype == np.float32
    assert candidate_width(5, 10) == 10  # never more rows than the index has


def test_the_bfloat16_copy_is_made_once_for_batches_and_never_for_single_queries():
    embeddings, _ = clustered(800)
    index = BlockIndex.from_arrays(embeddings, texts_for(800), progress=False)
    index.set_search_params(precision="bfloat16")
    _, ids = index.search(_queries(1), k=5)  # one query: FAISS's float32 scan is faster
    assert index._low_vectors is None
    np.testing.assert_array_equal(ids, index.exact_search(_queries(1), k=5)[1])
    index.search(_queries(16), k=5)
    copy = index._low_vectors
    assert copy is not None and str(copy.dtype) == "torch.bfloat16"
    index.search(_queries(30), k=5)
    assert index._low_vectors is copy  # made once, reused


def test_an_edit_drops_the_bfloat16_copy():
    embeddings, _ = clustered(600)
    index = BlockIndex.from_arrays(embeddings, texts_for(600), progress=False)
    index.set_search_params(precision="bfloat16")
    queries = _queries(16)
    index.search(queries, k=3)
    index.remove(list(range(0, 600, 2)))
    index.add(-embeddings[:300], texts_for(300))  # same number of rows, other vectors
    _, ids = index.search(queries, k=3)
    np.testing.assert_array_equal(ids, index.exact_search(queries, k=3)[1])


def test_precision_is_saved_with_the_index_and_reloaded(tmp_path):
    embeddings, _ = clustered(300)
    index = BlockIndex.from_arrays(embeddings, texts_for(300), search_params={"precision": "bfloat16"},
                                   progress=False)
    index.save_to_disk(tmp_path / "index")
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["search_params"] == {
        "precision": "bfloat16"}
    loaded = BlockIndex.load_from_disk(tmp_path / "index")
    assert loaded.manifest.search_params["precision"] == "bfloat16"
    np.testing.assert_array_equal(loaded.search(_queries(20), k=4)[1], index.search(_queries(20), k=4)[1])


@pytest.mark.parametrize("factory, params, message", [
    ("Flat", {"precision": "float16"}, "precision must be one of"),
    ("Flat", {"precision": 16}, "precision must be one of"),
    ("IVF4,Flat", {"precision": "bfloat16"}, "applies to Flat"),
    ("HNSW32", {"precision": "bfloat16"}, "applies to Flat"),
])
def test_unknown_or_inapplicable_precisions_are_refused(factory, params, message):
    embeddings, _ = clustered(300)
    with pytest.raises(ValueError, match=message):
        BlockIndex.from_arrays(embeddings, texts_for(300), factory=factory, search_params=params, progress=False)
    index = BlockIndex.from_arrays(embeddings, texts_for(300), factory=factory, progress=False)
    with pytest.raises(ValueError, match=message):
        index.search(_queries(2), k=2, **params)
    with pytest.raises(ValueError, match=message):
        index.set_search_params(**params)
    assert "precision" not in index.manifest.search_params


def test_a_manifest_with_a_bad_precision_is_refused(tmp_path):
    embeddings, _ = clustered(200)
    BlockIndex.from_arrays(embeddings, texts_for(200), progress=False).save_to_disk(tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["search_params"] = {"precision": "int4"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="search_params"):
        BlockIndex.load_from_disk(tmp_path / "index")
