"""Hub sharing of a BlockIndex against the local fake Hub: repo layout, round trips, caching, corruption, offline."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash

from index_builder import BlockIndex, IndexMismatchError
from index_builder.hub.repo import parse_size, write_hub_folder
from index_builder.index.manifest import Manifest

N, DIM = 120, 8


def embeddings_for(n=N, dimension=DIM, seed=0):
    """Points around a few random centres (so an IVF index has real clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dimension))
    return (centres[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, dimension))).astype(np.float32)


def small_index(factory="Flat", n=N):
    texts = [f"block {i}: some text about topic {i % 7}" for i in range(n)]
    titles = [f"Title {i % 5}" for i in range(n)]
    return BlockIndex.from_arrays(embeddings_for(n), texts, titles=titles, doc_ids=[f"doc-{i // 3}" for i in range(n)],
                                  factory=factory, embedder_name="toy-embedder", progress=False)


def queries(count=5):
    return np.random.default_rng(1).normal(size=(count, DIM)).astype(np.float32)


def resolve_requests(fake_hub):
    return [path for method, path in fake_hub.requests if "/resolve/" in path]


def corrupt(data: bytes) -> bytes:
    """Same length, one byte flipped in the middle."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def set_server_file(fake_hub, repo_id, path, data):
    """Replace a file's bytes at the head of main on the fake Hub (as a damaged upload would)."""
    state = fake_hub._state
    with state.lock:
        state.get_repo("dataset", repo_id).resolve("main").files[path] = data


def assert_same_index(original, reloaded):
    expected_scores, expected_ids = original.search(queries(), k=6)
    scores, ids = reloaded.search(queries(), k=6)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)
    all_ids = original.blocks["block_id"]
    assert reloaded.get_blocks(all_ids) == original.get_blocks(all_ids)
    np.testing.assert_array_equal(reloaded.get_embeddings(all_ids), original.get_embeddings(all_ids))
    assert reloaded.manifest.factory == original.manifest.factory
    assert reloaded.manifest.search_params == original.manifest.search_params
    assert reloaded.manifest.embedder_name == original.manifest.embedder_name


def test_push_writes_parquet_faiss_manifest_and_card_in_one_commit(fake_hub):
    index = small_index()
    info = index.push_to_hub("user/tiny-index", description="Toy corpus of numbered blocks.")
    files = fake_hub.files("user/tiny-index", repo_type="dataset")
    assert set(files) == {"data/train-00000-of-00001.parquet", "index.faiss", "manifest.json", "README.md"}
    commits = [path for method, path in fake_hub.requests if method == "POST" and "/commit/" in path]
    assert commits == ["/api/datasets/user/tiny-index/commit/main"]
    assert info.oid in info.commit_url

    manifest_text = files["manifest.json"].decode()
    manifest = Manifest.from_json(manifest_text)
    assert manifest.num_blocks == N and manifest.dimension == DIM and manifest.factory == "Flat"
    assert set(manifest.files) == {"data/train-00000-of-00001.parquet", "index.faiss"}
    for name, entry in manifest.files.items():
        assert entry["bytes"] == len(files[name])
        assert entry["xxh3_64"] == xxhash.xxh3_64(files[name]).hexdigest()
    assert json.loads(manifest_text)["shards"] == ["data/train-00000-of-00001.parquet"]

    table = pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"]))
    assert table.column_names == ["block_id", "doc_id", "title", "text", "embeddings"]
    assert table.column("text").to_pylist() == index.blocks["text"]
    np.testing.assert_array_equal(np.stack(table.column("embeddings").to_numpy(zero_copy_only=False)),
                                  embeddings_for())

    card = files["README.md"].decode()
    header, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "configs:" in header and "path: data/*.parquet" in header and "split: train" in header
    assert "license:" in header and "- realm" in header
    assert "Toy corpus of numbered blocks." in body
    assert f"| blocks | {N} |" in body and f"| dimension | {DIM} |" in body and "`Flat`" in body
    assert "toy-embedder" in body and manifest.created in body
    assert 'BlockIndex.from_pretrained("user/tiny-index")' in body and "pip install realm-hf" in body
    assert f"{len(files['index.faiss']):,}" in body


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_from_pretrained_round_trip(fake_hub, hub_cache, tmp_path, factory):
    index = small_index(factory)
    if factory.startswith("IVF"):  # push a memory-mapped index with gaps in its block ids
        index.remove([3, 50])
        index.set_search_params(nprobe=2)
        index = BlockIndex.load_from_disk(index.save_to_disk(tmp_path / "saved"))
    index.push_to_hub("user/round-trip")
    reloaded = BlockIndex.from_pretrained("user/round-trip")
    assert_same_index(index, reloaded)
    assert len(reloaded) == len(index)
    assert reloaded.directory.is_relative_to(hub_cache)
    assert sorted(p.name for p in reloaded.directory.iterdir()) == ["blocks.arrow", "index.faiss", "manifest.json"]


def test_second_load_reuses_the_converted_copy_also_offline(fake_hub, monkeypatch):
    index = small_index()
    index.push_to_hub("user/cached")
    first = BlockIndex.from_pretrained("user/cached")
    downloads = len(resolve_requests(fake_hub))
    assert downloads >= 3  # manifest, shard and index.faiss were fetched
    blocks_file = first.directory / "blocks.arrow"
    written = blocks_file.stat().st_mtime_ns

    second = BlockIndex.from_pretrained("user/cached")
    assert len(resolve_requests(fake_hub)) == downloads
    assert second.directory == first.directory and blocks_file.stat().st_mtime_ns == written

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests_before = len(fake_hub.requests)
    offline = BlockIndex.from_pretrained("user/cached")
    assert len(fake_hub.requests) == requests_before
    assert_same_index(index, offline)


@pytest.mark.parametrize("damaged", ["index.faiss", "data/train-00001-of-00002.parquet"])
def test_corrupted_file_on_the_hub_raises_index_mismatch(fake_hub, damaged):
    index = small_index()
    index.push_to_hub("user/damaged", max_shard_size=index.blocks.data.nbytes // 2 + 1)
    good = fake_hub.files("user/damaged", repo_type="dataset")[damaged]
    set_server_file(fake_hub, "user/damaged", damaged, corrupt(good))
    with pytest.raises(IndexMismatchError, match=damaged):
        BlockIndex.from_pretrained("user/damaged")
    # the bad download was evicted, so once the file is fixed a plain retry succeeds
    set_server_file(fake_hub, "user/damaged", damaged, good)
    assert_same_index(index, BlockIndex.from_pretrained("user/damaged"))


def test_small_max_shard_size_gives_several_shards_in_order(fake_hub):
    index = small_index()
    index.push_to_hub("user/sharded", max_shard_size=index.blocks.data.nbytes // 4)
    files = fake_hub.files("user/sharded", repo_type="dataset")
    shards = sorted(name for name in files if name.startswith("data/"))
    assert len(shards) >= 4
    assert shards == [f"data/train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    rows = [pq.read_table(io.BytesIO(files[name])).num_rows for name in shards]
    assert sum(rows) == N and min(rows) >= N // len(shards) - 1
    reloaded = BlockIndex.from_pretrained("user/sharded")
    assert reloaded.blocks["block_id"] == list(range(N))
    assert_same_index(index, reloaded)

    # pushing again with one shard removes the old shards in the same commit
    index.push_to_hub("user/sharded")
    files = fake_hub.files("user/sharded", repo_type="dataset")
    assert sorted(name for name in files if name.startswith("data/")) == ["data/train-00000-of-00001.parquet"]


def test_datasets_load_dataset_reads_the_parquet_rows(fake_hub, tmp_path):
    import datasets

    index = small_index()
    index.push_to_hub("user/as-dataset", max_shard_size=index.blocks.data.nbytes // 3)
    rows = datasets.load_dataset("user/as-dataset", split="train", cache_dir=str(tmp_path / "datasets"))
    assert rows.column_names == ["block_id", "doc_id", "title", "text", "embeddings"]
    assert rows["block_id"] == list(range(N)) and rows["text"] == index.blocks["text"]
    np.testing.assert_array_equal(np.asarray(rows["embeddings"], dtype=np.float32), embeddings_for())


def test_local_hub_layout_directory_loads_and_is_checked(tmp_path):
    index = small_index("IVF4,Flat")
    folder = tmp_path / "hub-layout"
    folder.mkdir()
    written = write_hub_folder(index, folder, max_shard_size=index.blocks.data.nbytes // 2 + 1, repo_id="user/x")
    assert not (folder / "blocks.arrow").exists() and "README.md" in written
    reloaded = BlockIndex.from_pretrained(folder, cache_dir=tmp_path / "converted")
    assert_same_index(index, reloaded)
    assert reloaded.directory.is_relative_to(tmp_path / "converted")
    assert BlockIndex.from_pretrained(str(folder), cache_dir=tmp_path / "converted").directory == reloaded.directory

    shard = folder / "data/train-00001-of-00002.parquet"
    shard.write_bytes(corrupt(shard.read_bytes()))
    (folder / "manifest.json").write_text((folder / "manifest.json").read_text() + " ")  # a new cache key
    with pytest.raises(IndexMismatchError, match="train-00001-of-00002.parquet"):
        BlockIndex.from_pretrained(folder, cache_dir=tmp_path / "converted")


def test_save_to_disk_directory_still_loads_through_from_pretrained(tmp_path):
    index = small_index()
    directory = index.save_to_disk(tmp_path / "saved")
    reloaded = BlockIndex.from_pretrained(directory)
    assert reloaded.directory == directory
    assert_same_index(index, reloaded)


def test_offline_and_not_cached_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="user/never-pushed") as error:
        BlockIndex.from_pretrained("user/never-pushed")
    assert "HF_HUB_OFFLINE" in str(error.value)


def test_missing_repo_and_missing_path_are_clear_errors(fake_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="No dataset repo 'user/nothing-here'"):
        BlockIndex.from_pretrained("user/nothing-here")
    with pytest.raises(FileNotFoundError, match="No directory"):
        BlockIndex.from_pretrained(tmp_path / "not-there")
    with pytest.raises(FileNotFoundError, match="No directory"):
        BlockIndex.from_pretrained("./some/local/dir")


def test_a_dataset_repo_without_manifest_is_refused(fake_hub):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("user/plain-data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id="user/plain-data",
                    repo_type="dataset")
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        BlockIndex.from_pretrained("user/plain-data")


def test_max_shard_size_is_parsed_and_bad_values_refused(fake_hub):
    assert parse_size("500MB") == 500 * 10**6 and parse_size("1GiB") == 2**30 and parse_size(" 64 kb ") == 64_000
    assert parse_size(1234) == 1234
    for bad in ["lots", "0MB", -5, 0, True, "12XB"]:
        with pytest.raises(ValueError, match="max_shard_size"):
            small_index().push_to_hub("user/never-made", max_shard_size=bad)
    assert "user/never-made" not in fake_hub.repos


def test_push_to_a_branch_and_load_that_revision(fake_hub):
    index = small_index()
    small_index(n=30).push_to_hub("user/branched")
    index.push_to_hub("user/branched", revision="v2", commit_message="v2 of the index")
    assert Manifest.from_json(fake_hub.files("user/branched", "dataset", "v2")["manifest.json"]).num_blocks == N
    assert Manifest.from_json(fake_hub.files("user/branched", "dataset")["manifest.json"]).num_blocks == 30
    assert_same_index(index, BlockIndex.from_pretrained("user/branched", revision="v2"))
    assert len(BlockIndex.from_pretrained("user/branched")) == 30


def test_a_save_to_disk_directory_uploaded_as_is_loads_from_the_hub(fake_hub, tmp_path):
    from huggingface_hub import HfApi

    index = small_index()
    directory = index.save_to_disk(tmp_path / "saved")
    HfApi().create_repo("user/raw-upload", repo_type="dataset")
    HfApi().upload_folder(repo_id="user/raw-upload", folder_path=directory, repo_type="dataset")
    assert_same_index(index, BlockIndex.from_pretrained("user/raw-upload"))


@pytest.mark.parametrize("name", ["../../../../victim.txt", "/VICTIM"])
def test_a_hostile_repo_manifest_never_reaches_files_outside_the_cache(fake_hub, hub_cache, tmp_path, name):
    """A repo whose manifest lists a file outside the snapshot (with a wrong size, which once made the loader evict
    it) is refused before anything is downloaded or deleted; the user's file is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    name = name.replace("/VICTIM", str(victim))
    small_index().push_to_hub("user/hostile")
    manifest = json.loads(fake_hub.files("user/hostile", repo_type="dataset")["manifest.json"])
    manifest["files"][name] = {"bytes": 1, "xxh3_64": "0" * 16}
    set_server_file(fake_hub, "user/hostile", "manifest.json", json.dumps(manifest).encode())
    with pytest.raises(IndexMismatchError, match="are not shards data/<name>.parquet"):
        BlockIndex.from_pretrained("user/hostile")
    assert victim.read_text() == "the user's own file"
    assert not list(hub_cache.rglob("victim.txt"))  # nothing of that name was fetched into the cache either


def test_a_lexical_part_travels_with_the_index_through_the_hub(fake_hub, hub_cache):
    index = small_index()
    index.add_lexical(progress=False)
    index.push_to_hub("user/hybrid-index")
    files = fake_hub.files("user/hybrid-index", repo_type="dataset")
    assert {"bm25/terms.arrow", "bm25/indptr.npy", "bm25/rows.npy", "bm25/weights.npy"} <= set(files)
    assert "BM25 (k1=1.5, b=0.75" in files["README.md"].decode()
    reloaded = BlockIndex.from_pretrained("user/hybrid-index")
    assert reloaded.has_lexical and reloaded.directory.is_relative_to(hub_cache)
    texts = ["topic 3 text", "Title 2 block"]
    for mode in ("lexical", "hybrid"):
        expected = index.search(queries(2), 6, query_texts=texts, mode=mode)
        found = reloaded.search(queries(2), 6, query_texts=texts, mode=mode)
        np.testing.assert_array_equal(found[1], expected[1])
        np.testing.assert_allclose(found[0], expected[0], rtol=1e-6)
    # a later push of the dense index alone removes the lexical files from the repo
    BlockIndex.from_arrays(embeddings_for(), [f"block {i}" for i in range(N)], progress=False).push_to_hub(
        "user/hybrid-index")
    assert not any(name.startswith("bm25/") for name in fake_hub.files("user/hybrid-index", repo_type="dataset"))
