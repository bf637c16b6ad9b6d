"""Encoding blocks: same vectors as the block tower, resumable chunks, SIGKILL recovery, and build_index end to end."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import datasets
import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from index_builder.encoding.build import build_index, default_work_dir
from index_builder.encoding.encode import ENCODING_FILE, chunk_path, encode_blocks
from modeling_realm import RealmRetriever
from tests.helpers import VOCAB, tiny_config
from tokenization import RealmTokenizerFast
from tokenization.block_inputs import block_inputs

WORDS = "paris is the capital of france . the seine is a river in london england cat dog alan turing".split()


def make_blocks(n, seed=0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(n)]
    titles = ["" if i % 3 == 0 else " ".join(rng.choice(WORDS, size=2)) for i in range(n)]
    return datasets.Dataset.from_dict({"title": titles, "text": texts})


def direct_embeddings(model, tokenizer, blocks):
    inputs = block_inputs(tokenizer, blocks["title"], blocks["text"], max_length=64)
    with torch.no_grad():
        return model.embed_blocks(**inputs).numpy()  # [n, proj]


def test_embeddings_equal_the_block_tower_in_row_order(retriever, tokenizer, tmp_path):
    blocks = make_blocks(37)
    embeddings = encode_blocks(blocks, retriever, tokenizer, tmp_path / "work", batch_size=5, max_length=64,
                               chunk_size=10, progress=False)
    assert embeddings.shape == (37, 16)
    expected = direct_embeddings(retriever, tokenizer, blocks)
    np.testing.assert_allclose(embeddings[0:37], expected, atol=1e-5)
    np.testing.assert_allclose(embeddings[8:23], expected[8:23], atol=1e-5)  # a slice across chunk borders
    assert len(list((tmp_path / "work").glob("chunk-*.npy"))) == 4


def test_a_resumed_run_redoes_only_missing_chunks(retriever, tokenizer, tmp_path):
    blocks, work = make_blocks(30), tmp_path / "work"
    first = encode_blocks(blocks, retriever, tokenizer, work, max_length=64, chunk_size=10, progress=False)[0:30]
    chunk_path(work, 1).unlink()
    kept = {c: chunk_path(work, c).stat().st_mtime_ns for c in (0, 2)}
    again = encode_blocks(blocks, retriever, tokenizer, work, max_length=64, chunk_size=10, progress=False)[0:30]
    np.testing.assert_array_equal(first, again)
    assert {c: chunk_path(work, c).stat().st_mtime_ns for c in (0, 2)} == kept


def test_a_work_dir_of_other_blocks_or_weights_is_refused(retriever, tokenizer, tmp_path):
    work = tmp_path / "work"
    encode_blocks(make_blocks(12), retriever, tokenizer, work, max_length=64, chunk_size=5, progress=False)
    with pytest.raises(ValueError, match="differs in blocks_digest, num_blocks"):
        encode_blocks(make_blocks(13, seed=1), retriever, tokenizer, work, max_length=64, chunk_size=5,
                      progress=False)
    other = RealmRetriever(tiny_config())
    with pytest.raises(ValueError, match="differs in embedder_fingerprint"):
        encode_blocks(make_blocks(12), other, tokenizer, work, max_length=64, chunk_size=5, progress=False)


def test_bad_encoding_inputs_are_named(retriever, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        encode_blocks(make_blocks(0), retriever, tokenizer, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match=r"lack columns \['title'\]"):
        encode_blocks(datasets.Dataset.from_dict({"text": ["a"]}), retriever, tokenizer, tmp_path / "b",
                      progress=False)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        encode_blocks(make_blocks(3), retriever, tokenizer, tmp_path / "c", mixed_precision="fp16", progress=False)


def test_bf16_autocast_stays_close_to_float32(retriever, tokenizer, tmp_path):
    blocks = make_blocks(8)
    half = encode_blocks(blocks, retriever, tokenizer, tmp_path / "w", max_length=64, mixed_precision="bf16",
                         progress=False)[0:8]
    assert half.dtype == np.float32
    full = direct_embeddings(retriever, tokenizer, blocks)
    cosine = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
    assert cosine.min() > 0.95 and not np.array_equal(half, full)  # bf16 really ran, and stayed close


def test_build_index_finds_each_block_by_its_own_embedding(retriever, tokenizer, tmp_path):
    blocks = make_blocks(25)
    index = build_index(blocks, retriever, tokenizer, tmp_path / "index", max_length=64, chunk_size=8,
                        progress=False)
    queries = direct_embeddings(retriever, tokenizer, blocks)
    exact = queries @ queries.T
    _, ids = index.search(queries, k=1)
    np.testing.assert_array_equal(ids[:, 0], exact.argmax(axis=1))
    assert index.get_blocks([3])[0]["text"] == blocks[3]["text"]
    assert index.manifest.embedder_fingerprint is not None and index.check_compatible(retriever)
    assert not default_work_dir(tmp_path / "index").exists()  # chunks are cleaned up after a successful build
    with pytest.raises(FileExistsError, match="overwrite"):
        build_index(blocks, retriever, tokenizer, tmp_path / "index", max_length=64, progress=False)


KILLED_WORKER = textwrap.dedent("""
    import sys, time, torch, datasets
    from index_builder.encoding.encode import encode_blocks
    from modeling_realm import RealmRetriever
    from tokenization import RealmTokenizerFast
    model = RealmRetriever.from_pretrained(sys.argv[1])
    forward = model.embedder.forward
    def slow_forward(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)
    model.embedder.forward = slow_forward
    blocks = datasets.load_from_disk(sys.argv[2])
    encode_blocks(blocks, model, RealmTokenizerFast(vocab_file=sys.argv[3]), sys.argv[4], batch_size=4,
                  max_length=64, chunk_size=8, progress=False)
""")


def test_sigkill_during_encoding_then_resume_gives_the_uninterrupted_result(retriever, tokenizer, tmp_path):
    blocks = make_blocks(160)
    retriever.save_pretrained(tmp_path / "model")
    blocks.save_to_disk(tmp_path / "blocks")
    work = tmp_path / "work"
    command = [sys.executable, "-c", KILLED_WORKER, str(tmp_path / "model"), str(tmp_path / "blocks"), str(VOCAB),
               str(work)]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(list(work.glob("chunk-*.npy"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the worker finished (or failed) before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done = len(list(work.glob("chunk-*.npy")))
    assert 3 <= done < 20 and (work / ENCODING_FILE).exists()
    resumed = encode_blocks(blocks, retriever, tokenizer, work, batch_size=4, max_length=64, chunk_size=8,
                            progress=False)[0:160]
    assert not list(work.glob(".chunk-*")), "a killed run's partial chunk must be cleaned up"
    fresh = encode_blocks(blocks, retriever, tokenizer, tmp_path / "fresh", batch_size=4, max_length=64,
                          chunk_size=8, progress=False)[0:160]
    np.testing.assert_array_equal(resumed, fresh)


SHARDED_WORKER = textwrap.dedent("""
    import sys, datasets
    from accelerate import Accelerator
    from index_builder.encoding.build import build_index
    from modeling_realm import RealmRetriever
    from tokenization import RealmTokenizerFast
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.num_processes
    model = RealmRetriever.from_pretrained(sys.argv[1])
    blocks = datasets.load_from_disk(sys.argv[2])
    build_index(blocks, model, RealmTokenizerFast(vocab_file=sys.argv[3]), sys.argv[4], max_length=64,
                chunk_size=7, accelerator=accelerator, keep_embeddings=True, progress=False)
""")


def test_two_processes_split_the_chunks_and_build_the_same_index(retriever, tokenizer, tmp_path):
    blocks = make_blocks(40)
    retriever.save_pretrained(tmp_path / "model")
    blocks.save_to_disk(tmp_path / "blocks")
    (tmp_path / "worker.py").write_text(SHARDED_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "worker.py"), str(tmp_path / "model"), str(tmp_path / "blocks"), str(VOCAB),
               str(tmp_path / "sharded")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[:6000]
    single = build_index(blocks, retriever, tokenizer, tmp_path / "single", max_length=64, progress=False)
    from index_builder import BlockIndex

    sharded = BlockIndex.load_from_disk(tmp_path / "sharded")
    queries = direct_embeddings(retriever, tokenizer, blocks)
    np.testing.assert_array_equal(sharded.search(queries, k=5)[1], single.search(queries, k=5)[1])
    np.testing.assert_allclose(sharded.get_embeddings(np.arange(40)), queries, atol=1e-5)
    assert len(list(default_work_dir(tmp_path / "sharded").glob("chunk-*.npy"))) == 6  # ceil(40 / 7), both ranks


def test_a_resumed_run_re_encodes_damaged_or_unfinished_chunks(retriever, tokenizer, tmp_path):
    """Flipped bytes in a finished chunk are refused by name when the index is built (and the chunk removed), a chunk
    killed before its checksum was written is encoded again, and the rerun ends with the right embeddings."""
    from index_builder.encoding.encode import ChunkedEmbeddings, checksum_path

    blocks, work = make_blocks(30), tmp_path / "work"
    first = encode_blocks(blocks, retriever, tokenizer, work, max_length=64, chunk_size=10, progress=False)[0:30]
    data = bytearray(chunk_path(work, 2).read_bytes())
    data[-5] ^= 0xFF  # one embedding value changes; the file keeps its size
    chunk_path(work, 2).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"chunk-000002.npy does not match its checksum.*Run the same command again"):
        ChunkedEmbeddings(work)
    assert not chunk_path(work, 2).exists()
    checksum_path(work, 1).unlink()  # as if killed between writing chunk 1 and its checksum
    kept = chunk_path(work, 0).stat().st_mtime_ns
    again = encode_blocks(blocks, retriever, tokenizer, work, max_length=64, chunk_size=10, progress=False)[0:30]
    np.testing.assert_array_equal(first, again)
    assert chunk_path(work, 0).stat().st_mtime_ns == kept  # the intact chunk was kept


def test_the_resume_key_covers_every_block_the_tokenizer_and_the_settings(retriever, tokenizer, tmp_path):
    """One block edited in the middle of the corpus (which a sample of rows could miss), another tokenizer, or other
    encoding settings: the old work directory is refused, not reused."""
    work = tmp_path / "work"
    blocks = make_blocks(3000)
    encode_blocks(blocks, retriever, tokenizer, work, max_length=16, chunk_size=1000, progress=False)
    texts = list(blocks["text"])
    texts[1501] = texts[1501] + " edited"  # a row the old 1,024-row sample of 3,000 blocks skipped
    edited = blocks.remove_columns("text").add_column("text", texts)
    with pytest.raises(ValueError, match="differs in blocks_digest"):
        encode_blocks(edited, retriever, tokenizer, work, max_length=16, chunk_size=1000, progress=False)
    other = RealmTokenizerFast(vocab_file=str(VOCAB), do_lower_case=False)
    with pytest.raises(ValueError, match="differs in tokenizer_fingerprint"):
        encode_blocks(blocks, retriever, other, work, max_length=16, chunk_size=1000, progress=False)
    with pytest.raises(ValueError, match="differs in mixed_precision"):
        encode_blocks(blocks, retriever, tokenizer, work, max_length=16, chunk_size=1000, mixed_precision="bf16",
                      progress=False)


def test_a_second_build_of_the_same_output_is_refused_at_once(retriever, tokenizer, tmp_path):
    """Two builds writing one output would share a work directory and delete each other's chunks."""
    from tokenization.storage import exclusive_lock

    output = tmp_path / "index"
    work = default_work_dir(output)
    work.mkdir()
    with exclusive_lock(work, "another build"):  # a build in progress
        with pytest.raises(BlockingIOError, match=f"The index {output} is being written by another process"):
            build_index(make_blocks(4), retriever, tokenizer, output, max_length=32, progress=False)
    assert not output.exists()
    build_index(make_blocks(4), retriever, tokenizer, output, max_length=32, progress=False)  # once it is done
    assert len(BlockIndex.load_from_disk(output)) == 4
