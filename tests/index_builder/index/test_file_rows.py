"""Serving reads block rows with os.pread (index_builder/index/file_rows.py): the same rows as the memory map, without
the file's pages joining the process's resident set."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from index_builder import BlockIndex
from index_builder.index.file_rows import file_mappings
from index_builder.index.manifest import BLOCKS_FILE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux)")
NUM_BLOCKS = 70_000  # two Arrow record batches of the blocks file (65,536 rows each)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(NUM_BLOCKS, 8)).astype(np.float32)
    words = np.array(["alpha", "beta", "gamma", "delta", "été", "ωmega"])
    texts = [" ".join(rng.choice(words, 150)) + f" #{i}" for i in range(NUM_BLOCKS)]  # ~1 KB each
    directory = tmp_path_factory.mktemp("rows") / "index"
    index = BlockIndex.from_arrays(embeddings, texts, titles=[f"title {i}" for i in range(NUM_BLOCKS)],
                                   doc_ids=[f"doc{i // 3}" for i in range(NUM_BLOCKS)], progress=False)
    index.save_to_disk(directory)
    return directory, embeddings, texts


def rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_rows_read_by_pread_equal_the_memory_mapped_rows(saved):
    directory, embeddings, texts = saved
    index = BlockIndex.load_from_disk(directory)
    assert index._file_rows is not None
    ids = np.array([0, 1, 65_535, 65_536, 65_537, NUM_BLOCKS - 1, 12_345, 3])  # both record batches and their seam
    by_pread, vectors = index.get_blocks(ids), index.get_embeddings(ids[None])
    index._file_rows = None  # the memory-mapped path
    assert by_pread == index.get_blocks(ids)
    assert [block["text"] for block in by_pread] == [texts[i] for i in ids]
    assert by_pread[3] == {"block_id": 65_536, "doc_id": "doc21845", "title": "title 65536", "text": texts[65_536]}
    np.testing.assert_array_equal(vectors, embeddings[ids][None])
    assert vectors.shape == (1, len(ids), 8)


def test_scattered_reads_leave_the_file_out_of_the_resident_set(saved):
    directory, _, _ = saved
    ids = np.random.default_rng(1).choice(NUM_BLOCKS, 3_000, replace=False)
    grown = {}
    for reader in ("pread", "memory map"):
        index = BlockIndex.load_from_disk(directory, verify=False)
        if reader == "memory map":
            index._file_rows = None
        index.get_blocks(ids[:2]), index.get_embeddings(ids[:2])  # code paths warm: only data pages count below
        before = rss_file_bytes()
        for start in range(0, len(ids), 100):
            index.get_blocks(ids[start:start + 100])
            index.get_embeddings(ids[start:start + 100])
        grown[reader] = rss_file_bytes() - before
        del index
    # the memory map pulls 64 KB windows of a ~75 MB file into the resident set; pread pulls in nothing
    assert grown["pread"] < 2e6 and grown["memory map"] > 10e6, grown


def test_edited_and_in_memory_indices_read_through_the_table(saved):
    directory, embeddings, _ = saved
    in_memory = BlockIndex.from_arrays(embeddings[:10], [f"t{i}" for i in range(10)], progress=False)
    assert in_memory._file_rows is None and in_memory.get_blocks([4])[0]["text"] == "t4"
    index = BlockIndex.load_from_disk(directory, verify=False)
    new_ids = index.add(np.ones((1, 8), dtype=np.float32), ["added"])
    assert index._file_rows is None
    assert index.get_blocks([int(new_ids[0]), 7])[0]["text"] == "added"
    assert index.get_blocks([7])[0]["block_id"] == 7


def test_a_file_truncated_after_loading_fails_with_advice(saved, tmp_path):
    directory, _, _ = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in directory.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    index = BlockIndex.load_from_disk(copy, verify=False)
    assert file_mappings(copy / BLOCKS_FILE)
    os.truncate(copy / BLOCKS_FILE, (copy / BLOCKS_FILE).stat().st_size // 2)
    with pytest.raises(OSError, match="ended early.*Load the index again"):
        index.get_blocks([NUM_BLOCKS - 1])


def _blocks_file_with_empty_titles_and_nulls(directory: Path, n: int = 40) -> Path:
    """A blocks.arrow whose titles are all empty (an empty data buffer) and some doc ids null."""
    import pyarrow as pa

    from index_builder.index.blocks_table import block_schema

    schema = block_schema(4)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(n * 4, dtype=np.float32)), 4)
    batch = pa.record_batch([pa.array(np.arange(n, dtype=np.int64)),
                             pa.array([None if i % 7 == 3 else f"doc{i}" for i in range(n)], pa.string()),
                             pa.array([""] * n, pa.string()), pa.array([f"text {i}" for i in range(n)], pa.string()),
                             vectors], schema=schema)
    path = directory / BLOCKS_FILE
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return path


def test_empty_and_null_strings_are_read_from_the_file_too(tmp_path):
    """A column of empty titles (no string data at all) and null doc ids no longer send every read through the
    memory map, where a truncated file is a SIGBUS."""
    import datasets

    from index_builder.index.file_rows import FileRows

    path = _blocks_file_with_empty_titles_and_nulls(tmp_path)
    dataset = datasets.Dataset.from_file(str(path))
    rows = FileRows.of(dataset, path)
    assert rows is not None
    wanted = np.array([0, 3, 10, 39])
    expected = [{name: dataset[int(i)][name] for name in ("block_id", "doc_id", "title", "text")} for i in wanted]
    assert rows.blocks(wanted) == expected and expected[1]["doc_id"] is None and expected[0]["title"] == ""


def test_a_blocks_file_truncated_under_a_loaded_index_is_an_oserror_not_a_crash(tmp_path):
    """In a separate process (a SIGBUS would kill the test runner): every title empty, the file cut after loading."""
    import subprocess
    import textwrap

    directory = tmp_path / "index"
    BlockIndex.from_arrays(np.eye(4, dtype=np.float32).repeat(500, axis=0), [f"text {i}" * 20 for i in range(2000)],
                           titles=[""] * 2000, progress=False).save_to_disk(directory)
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from index_builder import BlockIndex
        index = BlockIndex.load_from_disk({str(directory)!r})
        assert index._file_rows is not None, "the pread path was not taken"
        os.truncate({str(directory / BLOCKS_FILE)!r}, 4096)
        try:
            index.get_blocks(np.array([1999]))
        except OSError as error:
            print("OSError:", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[3])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ended early" in result.stdout and "Load the index again" in result.stdout
