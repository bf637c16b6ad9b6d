"""BlockIndex: known answers, FAISS factories against brute force, persistence and the errors users can cause."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from index_builder import BlockIndex, IndexMismatchError
from index_builder.index.manifest import BLOCKS_FILE, FAISS_FILE, MANIFEST
from modeling_realm import RealmRetriever
from tests.helpers import perturb_, tiny_config


def clustered(n, dimension=32, clusters=40, seed=0):
    """Points around random centres, like real embeddings; returns (points, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dimension))
    return points.astype(np.float32), centres


def brute_force(queries, embeddings, k):
    scores = queries @ embeddings.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def texts_for(n):
    return [f"block number {i}" for i in range(n)]


def test_known_answers_on_hand_built_embeddings():
    # block i points along axis i; a query along axis 2 with a bit of axis 0 must rank 2, then 0
    embeddings = np.eye(4, dtype=np.float32)
    index = BlockIndex.from_arrays(embeddings, ["zero", "one", "two", "three"], titles=["t0", "t1", "t2", "t3"],
                                   doc_ids=["a", "a", "b", "c"])
    scores, ids = index.search(np.array([[0.2, 0.0, 1.0, 0.0]], dtype=np.float32), k=2)
    assert ids.tolist() == [[2, 0]]
    np.testing.assert_allclose(scores, [[1.0, 0.2]], rtol=1e-6)
    assert index.get_blocks(ids) == [[{"block_id": 2, "doc_id": "b", "title": "t2", "text": "two"},
                                      {"block_id": 0, "doc_id": "a", "title": "t0", "text": "zero"}]]
    np.testing.assert_array_equal(index.get_embeddings([3]), embeddings[[3]])


def test_exact_search_equals_numpy_brute_force():
    embeddings, _ = clustered(3000)
    queries = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    index = BlockIndex.from_arrays(embeddings, texts_for(3000), progress=False)
    scores, ids = index.search(queries, k=10)
    expected_scores, expected_ids = brute_force(queries, embeddings, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    exact_scores, exact_ids = index.exact_search(queries, k=10)
    np.testing.assert_array_equal(exact_ids, expected_ids)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def test_batched_exact_search_by_matrix_product_matches_faiss(monkeypatch):
    """Batches of >= 16 queries on a Flat index are scored by torch matrix products over FAISS's own vectors."""
    from index_builder.index import exact

    monkeypatch.setattr(exact, "GEMM_SCORES_PER_CHUNK", 64 * 37)  # 32-row chunks (one group each): many merges
    embeddings, _ = clustered(1000)
    index = BlockIndex.from_arrays(embeddings, texts_for(1000), progress=False)
    index.remove(list(range(0, 1000, 7)))  # ids no longer equal rows
    index.add(embeddings[:3] * 2, texts_for(3))  # new ids after a gap
    queries = np.random.default_rng(2).normal(size=(64, 32)).astype(np.float32)
    used = []
    monkeypatch.setattr(exact, "_keep_top", lambda *a, _real=exact._keep_top: used.append(1) or _real(*a))
    for k in (1, 10, 60):
        scores, ids = index.search(queries, k=k)
        faiss_scores, faiss_ids = index.faiss_index.search(queries, k)
        np.testing.assert_array_equal(ids, faiss_ids)
        np.testing.assert_allclose(scores, faiss_scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(index.search(queries[:4], k=k)[1], faiss_ids[:4])  # FAISS path
    assert used, "the matrix-product path did not run"


def test_matrix_product_search_orders_equal_scores_by_row():
    from index_builder.index.exact import gemm_top_k

    vectors = np.ones((50, 4), dtype=np.float32)
    vectors[[40, 10]] *= 2
    scores, rows = gemm_top_k(np.ones((3, 4), dtype=np.float32), vectors, k=5)
    for query_rows in rows.tolist():
        # the two best in row order, then three of the 48 tied rows (which three is unspecified), ascending
        assert query_rows[:2] == [10, 40] and query_rows[2:] == sorted(set(query_rows[2:]))
        assert not {10, 40} & set(query_rows[2:])
    np.testing.assert_array_equal(scores, [[8, 8, 4, 4, 4]] * 3)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8", "HNSW32"])
def test_approximate_indices_keep_recall_at_documented_defaults(factory):
    """At the default knobs (nprobe=min(nlist, 32), efSearch=128, rerank=25 for PQ) recall@5 >= 0.9 of exact."""
    embeddings, centres = clustered(4000)
    rng = np.random.default_rng(2)
    queries = (centres[rng.integers(0, len(centres), 100)] + 0.3 * rng.normal(size=(100, 32))).astype(np.float32)
    index = BlockIndex.from_arrays(embeddings, texts_for(4000), factory=factory, progress=False)
    _, ids = index.search(queries, k=5)
    _, exact = brute_force(queries, embeddings, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exact)])
    assert recall >= 0.9, f"{factory}: recall@5 {recall:.3f} with {index.manifest.search_params}"


def test_no_faiss_padding_when_an_ivf_probe_finds_too_few():
    embeddings, centres = clustered(600, clusters=30)
    index = BlockIndex.from_arrays(embeddings, texts_for(600), factory="IVF30,Flat", search_params={"nprobe": 1},
                                   progress=False)
    raw_scores, raw_ids = index.faiss_index.search(centres[:5], 100)
    assert (raw_ids < 0).any(), "the test needs a probe that comes back short"
    _, ids = index.search(centres[:5], k=100)
    assert (ids >= 0).all()
    assert all(len(set(row)) == 100 for row in ids)


def test_search_params_per_call_and_persistent():
    embeddings, _ = clustered(2000)
    index = BlockIndex.from_arrays(embeddings, texts_for(2000), factory="IVF32,Flat", progress=False)
    assert index.manifest.search_params == {"nprobe": 32}
    index.set_search_params(nprobe=2)
    assert index.manifest.search_params["nprobe"] == 2
    exhaustive = index.search(embeddings[:10], k=5, nprobe=32)[1]
    np.testing.assert_array_equal(exhaustive, brute_force(embeddings[:10], embeddings, 5)[1])
    with pytest.raises(ValueError, match="does not apply to this index"):
        index.search(embeddings[:1], k=1, efSearch=10)
    with pytest.raises(ValueError, match="Unknown search parameter 'nprob'"):
        index.set_search_params(nprob=3)


def test_save_load_round_trip_keeps_ids_and_manifest(tmp_path):
    embeddings, _ = clustered(1500)
    model = perturb_(RealmRetriever(tiny_config(retriever_proj_size=32)))
    index = BlockIndex.from_arrays(embeddings, texts_for(1500), titles=["T"] * 1500, factory="HNSW32",
                                   embedder=model, embedder_name="tiny-retriever", progress=False)
    before = index.search(embeddings[:7], k=4)
    index.save_to_disk(tmp_path / "index")
    assert sorted(os.listdir(tmp_path)) == ["index"]  # no staging directory left behind
    loaded = BlockIndex.load_from_disk(tmp_path / "index")
    after = loaded.search(embeddings[:7], k=4)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    manifest = json.loads((tmp_path / "index" / MANIFEST).read_text())
    assert manifest["num_blocks"] == 1500 and manifest["dimension"] == 32 and manifest["factory"] == "HNSW32"
    assert manifest["metric"] == "inner_product" and manifest["format_version"] == 1
    assert manifest["embedder"]["name"] == "tiny-retriever"
    assert manifest["embedder"]["fingerprint"].startswith("sha256:")
    assert set(manifest["files"]) == {BLOCKS_FILE, FAISS_FILE} and manifest["created"].endswith("Z")
    assert loaded.get_blocks([1499]) == [{"block_id": 1499, "doc_id": "1499", "title": "T",
                                          "text": "block number 1499"}]


def test_add_and_remove_blocks(tmp_path):
    embeddings, _ = clustered(500)
    index = BlockIndex.from_arrays(embeddings, texts_for(500), factory="IVF8,Flat", search_params={"nprobe": 8},
                                   progress=False)
    new = np.full((2, 32), 10.0, dtype=np.float32) * np.eye(2, 32, dtype=np.float32)
    ids = index.add(new, ["new zero", "new one"], titles=["n", "n"])
    assert ids.tolist() == [500, 501] and len(index) == 502
    assert index.search(new[:1], k=1)[1].tolist() == [[500]]
    assert index.remove([500, 3]) == 2
    assert len(index) == 500
    assert 500 not in index.search(new[:1], k=5)[1]
    with pytest.raises(KeyError, match=r"\[3\]"):
        index.get_blocks([3])
    index.save_to_disk(tmp_path / "edited")
    reloaded = BlockIndex.load_from_disk(tmp_path / "edited")
    assert reloaded.get_blocks([501])[0]["text"] == "new one"
    assert reloaded.search(new[1:], k=1)[1].tolist() == [[501]]


def test_hnsw_refuses_remove_with_advice():
    embeddings, _ = clustered(200)
    index = BlockIndex.from_arrays(embeddings, texts_for(200), factory="HNSW16", progress=False)
    with pytest.raises(ValueError, match="cannot remove vectors"):
        index.remove([1])


def small_index(n=300, **kwargs):
    embeddings, _ = clustered(n)
    return BlockIndex.from_arrays(embeddings, texts_for(n), progress=False, **kwargs), embeddings


def test_bad_queries_and_k_are_named():
    index, embeddings = small_index()
    with pytest.raises(IndexMismatchError, match="Queries have 16 dimensions but the index holds 32-d"):
        index.search(np.zeros((1, 16), dtype=np.float32), k=1)
    with pytest.raises(ValueError, match="for a single query pass q\\[None\\]"):
        index.search(embeddings[0], k=1)
    bad = embeddings[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[1\]"):
        index.search(bad, k=1)
    with pytest.raises(ValueError, match="k=301 exceeds the 300 blocks"):
        index.search(embeddings[:1], k=301)
    for k in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(embeddings[:1], k=k)
    from_torch = index.search(torch.from_numpy(embeddings[:2]).requires_grad_(), k=3)[1]
    np.testing.assert_array_equal(from_torch, index.search(embeddings[:2], k=3)[1])


def test_bad_build_inputs_are_named():
    embeddings, _ = clustered(10)
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[2\]"):
        BlockIndex.from_arrays(np.where(np.arange(10)[:, None] == 2, np.nan, embeddings), texts_for(10))
    with pytest.raises(ValueError, match="Got 9 texts for 10 embeddings"):
        BlockIndex.from_arrays(embeddings, texts_for(9))
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        BlockIndex.from_arrays(embeddings, list(range(10)))
    with pytest.raises(ValueError, match="empty corpus"):
        BlockIndex.from_arrays(np.zeros((0, 8), dtype=np.float32), [])
    with pytest.raises(ValueError, match="FAISS cannot build factory 'IVF,Nonsense'"):
        BlockIndex.from_arrays(embeddings, texts_for(10), factory="IVF,Nonsense")
    with pytest.raises(ValueError, match="needs at least 64 training vectors"):
        BlockIndex.from_arrays(embeddings, texts_for(10), factory="IVF64,Flat")


def test_corrupted_truncated_and_mismatched_files_are_refused(tmp_path):
    index, _ = small_index()
    directory = index.save_to_disk(tmp_path / "index")
    faiss_file = directory / FAISS_FILE
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    with pytest.raises(IndexMismatchError, match="index.faiss does not match the checksum"):
        BlockIndex.load_from_disk(directory)
    faiss_file.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(IndexMismatchError, match="index.faiss has .* bytes but the manifest says"):
        BlockIndex.load_from_disk(directory)

    directory = index.save_to_disk(tmp_path / "index")
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["num_blocks"] = 299
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="holds 300 vectors, the manifest says 299"):
        BlockIndex.load_from_disk(directory)
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(IndexMismatchError, match="not valid JSON"):
        BlockIndex.load_from_disk(directory)
    (directory / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match="is not a BlockIndex directory"):
        BlockIndex.load_from_disk(directory)
    with pytest.raises(FileNotFoundError, match="No BlockIndex directory"):
        BlockIndex.load_from_disk(tmp_path / "nowhere")


def test_save_refuses_to_replace_a_directory_that_is_not_an_index(tmp_path):
    index, _ = small_index()
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a BlockIndex; refusing to replace it"):
        index.save_to_disk(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    index.save_to_disk(tmp_path / "index")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        index.save_to_disk(tmp_path / "index", overwrite=False)


def test_failed_save_leaves_the_previous_index_loadable(tmp_path, monkeypatch):
    index, embeddings = small_index()
    directory = index.save_to_disk(tmp_path / "index")
    bigger, _ = small_index(n=400)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("index_builder.index.faiss_utils.write", crash)
    with pytest.raises(OSError, match="disk full"):
        bigger.save_to_disk(directory)
    assert len(BlockIndex.load_from_disk(directory)) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_interrupted_swap_is_recovered(tmp_path):
    index, _ = small_index()
    directory = index.save_to_disk(tmp_path / "index")
    # a process killed between the two renames leaves the previous copy aside (under the marker it wrote first) and
    # no index in place
    (tmp_path / ".index.swap-deadbeef").write_text("index.previous-deadbeef")
    os.replace(directory, tmp_path / "index.previous-deadbeef")
    assert len(BlockIndex.load_from_disk(directory)) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_sigkill_during_repeated_saves_never_leaves_a_broken_index(tmp_path):
    """A process saving over the same index is killed at an arbitrary moment; what is left always loads."""
    index, _ = small_index(n=2000)
    directory = index.save_to_disk(tmp_path / "index")
    script = textwrap.dedent(f"""
        import numpy as np
        from index_builder import BlockIndex
        index = BlockIndex.load_from_disk({str(directory)!r})
        extra = np.random.default_rng(0).normal(size=(20000, 32)).astype("float32")
        bigger = BlockIndex.from_arrays(np.concatenate([extra, extra]), ["x" * 200] * 40000, progress=False)
        print("ready", flush=True)
        while True:
            bigger.save_to_disk({str(directory)!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[3])
    assert process.stdout.readline().strip() == "ready"
    import time

    time.sleep(1.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    loaded = BlockIndex.load_from_disk(directory)
    assert len(loaded) in (2000, 40000)


def test_retriever_attachment_checks_dimension_and_fingerprint():
    model = perturb_(RealmRetriever(tiny_config(retriever_proj_size=32)))
    embeddings, _ = clustered(50)
    index = BlockIndex.from_arrays(embeddings, texts_for(50), embedder=model, progress=False)
    model.index = index  # same weights: no warning
    assert index.check_compatible(model)
    other = perturb_(RealmRetriever(tiny_config(retriever_proj_size=32)), seed=9)
    with pytest.warns(UserWarning, match="differ from RealmRetriever's block tower"):
        other.index = index
    with pytest.raises(IndexMismatchError, match="holds 32-d embeddings but RealmRetriever produces 16-d"):
        RealmRetriever(tiny_config()).index = index


def test_retriever_returns_ids_scores_and_texts():
    model = perturb_(RealmRetriever(tiny_config())).eval()
    block_inputs = torch.randint(5, 106, (12, 9))
    with torch.no_grad():
        block_embeddings = model.embed_blocks(block_inputs)
    model.index = BlockIndex.from_arrays(block_embeddings, texts_for(12), embedder=model, progress=False)
    found = model.retrieve(block_inputs[[3, 8]], k=2)
    assert found.block_ids[:, 0].tolist() == [3, 8]
    assert [row[0]["text"] for row in found.blocks] == ["block number 3", "block number 8"]
    query = model.embed_queries(block_inputs[[3, 8]])
    relevance = model.relevance_to(query, found.block_ids)
    np.testing.assert_allclose(relevance.detach().numpy(), found.scores, rtol=1e-4, atol=1e-4)
    relevance.sum().backward()
    assert model.embedder.cls.dense.weight.grad.abs().sum() > 0


def test_a_per_call_rerank_overrides_the_saved_one():
    """search(..., rerank=0) returns FAISS's own PQ scores for that call; the saved rerank re-scores exactly."""
    embeddings, _ = clustered(2000)
    index = BlockIndex.from_arrays(embeddings, texts_for(2000), factory="IVF16,PQ8", progress=False)
    queries = np.random.default_rng(5).normal(size=(8, 32)).astype(np.float32)
    scores, ids = index.search(queries, k=3)
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, index.get_embeddings(ids)), rtol=1e-5)
    raw_scores, raw_ids = index.search(queries, k=3, rerank=0)
    faiss_scores, faiss_ids = index.faiss_index.search(queries, 3)
    np.testing.assert_array_equal(raw_ids, faiss_ids)
    np.testing.assert_allclose(raw_scores, faiss_scores, rtol=1e-6)
    assert index.manifest.search_params["rerank"] == 25  # the saved value is untouched
