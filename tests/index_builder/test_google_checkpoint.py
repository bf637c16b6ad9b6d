"""`BlockIndex.from_realm_checkpoint`: google's open-QA layout (block_emb + pickled block_records.npy) -> BlockIndex.

The checkpoint is the transformers 4.57.6 RealmForOpenQA fixture; its io.safetensors holds each question's
projection and the block ids 4.x retrieved (its top reader_beam_size), which the converted index must reproduce.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from index_builder import BlockIndex
from index_builder import google_checkpoint as convert
from tests.helpers import PARITY, load_io, populate_hub_cache, write_google_layout

FIXTURE = PARITY / "tiny" / "RealmForOpenQA"
REPO_ID = "google/realm-orqa-nq-openqa"
CASES = json.loads((FIXTURE / "openqa_cases.json").read_text())
TEXTS = CASES["block_texts"]


def google_records(path, texts):
    """block_records.npy as google wrote it: a pickled object array of UTF-8 bytes."""
    np.save(path, np.array([t.encode() for t in texts], dtype=object), allow_pickle=True)


@pytest.fixture
def checkpoint(tmp_path):
    """A local copy of the fixture in google's open-QA layout."""
    directory = tmp_path / "realm-orqa-nq-openqa"
    directory.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        shutil.copy(FIXTURE / name, directory / name)
    google_records(directory / "block_records.npy", TEXTS)
    return directory


def questions():
    """(question projection [1, 16], 4.x block ids [reader_beam_size]) for each fixture question."""
    for q in range(len(CASES["questions"])):
        inputs, outputs = load_io(FIXTURE, prefix=f"q{q}.")
        yield outputs["question_projection"].numpy(), inputs["block_ids"].numpy()


def assert_matches_4x(index):
    assert len(index) == len(TEXTS)
    for projection, expected in questions():
        _, block_ids = index.search(projection, k=len(expected))
        np.testing.assert_array_equal(block_ids[0], expected)
    blocks = index.get_blocks(np.arange(len(TEXTS)))
    assert [b["text"] for b in blocks] == TEXTS
    assert [b["title"] for b in blocks] == [""] * len(TEXTS)
    assert [b["doc_id"] for b in blocks] == [str(i) for i in range(len(TEXTS))]


def block_emb():
    return torch.load(FIXTURE / "pytorch_model.bin", weights_only=True)["block_emb"].numpy()


# --------------------------------------------------------------------------------------------- pickle safety
def test_pickled_records_are_refused_without_allow_pickle(checkpoint):
    with pytest.raises(ValueError, match="allow_pickle=True") as error:
        BlockIndex.from_realm_checkpoint(checkpoint)
    message = str(error.value)
    assert "block_records.npy" in message and "pickled object array" in message and "execute code" in message


class _Executes:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_refused_records_are_never_unpickled(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(checkpoint / "block_records.npy", np.array([_Executes()] * len(TEXTS), dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        BlockIndex.from_realm_checkpoint(checkpoint)
    assert not (tmp_path / "pwned").exists()


def test_fixed_width_records_need_no_pickle(checkpoint):
    np.save(checkpoint / "block_records.npy", np.array([t.encode() for t in TEXTS]))  # dtype 'S'
    assert_matches_4x(BlockIndex.from_realm_checkpoint(checkpoint))
    np.save(checkpoint / "block_records.npy", np.array(TEXTS))  # dtype 'U'
    assert_matches_4x(BlockIndex.from_realm_checkpoint(checkpoint))


# --------------------------------------------------------------------------------------------- conversion
def test_converted_index_reproduces_4x_retrieval(checkpoint):
    index = BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True, progress=False)
    assert_matches_4x(index)
    np.testing.assert_array_equal(index.get_embeddings(np.arange(len(TEXTS))), block_emb())
    assert index.factory == "Flat"
    assert index.manifest.embedder_name == str(checkpoint)
    assert index.manifest.embedder_fingerprint is None


def test_block_emb_is_memory_mapped_and_read_without_code(checkpoint, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    embeddings = convert.read_block_emb(convert.CheckpointFiles(checkpoint))
    assert calls and all(c.get("mmap") is True and c.get("weights_only") is True for c in calls)
    assert embeddings.shape == block_emb().shape
    np.testing.assert_array_equal(embeddings[2:5], block_emb()[2:5])


def test_streamed_build_to_directory(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "ROWS_PER_BATCH", 4)  # 6 rows -> two batches
    out = tmp_path / "indices" / "nq"
    index = BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True, output_dir=out, embedder_name="nq",
                                             search_params={"rerank": 3}, progress=False)
    assert index.directory == out and index.manifest.embedder_name == "nq"
    assert index.manifest.search_params["rerank"] == 3
    assert_matches_4x(index)
    assert_matches_4x(BlockIndex.load_from_disk(out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["nq"]  # the scratch text table is gone
    with pytest.raises(FileExistsError, match="overwrite=True"):
        BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True, output_dir=out)
    replaced = BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True, directory=out, overwrite=True,
                                                progress=False)
    assert replaced.manifest.embedder_name == str(checkpoint)


def test_save_to_disk_and_reload(checkpoint, tmp_path):
    index = BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True, progress=False)
    index.save_to_disk(tmp_path / "saved")
    reloaded = BlockIndex.load_from_disk(tmp_path / "saved")
    assert_matches_4x(reloaded)
    projection = next(questions())[0]
    for a, b in zip(index.search(projection, k=len(TEXTS)), reloaded.search(projection, k=len(TEXTS))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sharded", [False, True])
def test_safetensors_checkpoint(checkpoint, sharded):
    state = {k: v.clone().contiguous() for k, v in
             torch.load(checkpoint / "pytorch_model.bin", weights_only=True).items()}
    (checkpoint / "pytorch_model.bin").unlink()
    if sharded:
        block_part = {"block_emb": state.pop("block_emb")}
        save_file(state, checkpoint / "model-00001-of-00002.safetensors")
        save_file(block_part, checkpoint / "model-00002-of-00002.safetensors")
        weight_map = {**{k: "model-00001-of-00002.safetensors" for k in state},
                      "block_emb": "model-00002-of-00002.safetensors"}
        (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(state, checkpoint / "model.safetensors")
    assert_matches_4x(BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True, progress=False))


# --------------------------------------------------------------------------------------------- Hub
def test_hub_repo_id_resolves_offline_from_cache(checkpoint, hub_cache):
    populate_hub_cache(hub_cache, REPO_ID, checkpoint)
    index = BlockIndex.from_realm_checkpoint(REPO_ID, allow_pickle=True, progress=False)
    assert_matches_4x(index)
    assert index.manifest.embedder_name == REPO_ID


def test_hub_repo_missing_records_names_repo_and_file(checkpoint, hub_cache):
    (checkpoint / "block_records.npy").unlink()
    populate_hub_cache(hub_cache, REPO_ID, checkpoint)
    with pytest.raises(FileNotFoundError, match=f"{REPO_ID} has no block_records.npy"):
        BlockIndex.from_realm_checkpoint(REPO_ID, allow_pickle=True)


def test_unknown_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="block_records.npy"):
        BlockIndex.from_realm_checkpoint("someone/not-cached", allow_pickle=True)
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a valid Hub repo id"):
        BlockIndex.from_realm_checkpoint(str(tmp_path / "no" / "such" / "dir"), allow_pickle=True)


# --------------------------------------------------------------------------------------------- bad inputs
def test_mismatched_row_counts(checkpoint):
    google_records(checkpoint / "block_records.npy", TEXTS[:-1])
    with pytest.raises(ValueError, match=f"block_emb has {len(TEXTS)} rows but .* has {len(TEXTS) - 1} records"):
        BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True)


def test_non_openqa_checkpoint_is_refused(tmp_path):
    directory = write_google_layout("google/realm-orqa-nq-reader", tmp_path / "reader")
    google_records(directory / "block_records.npy", TEXTS)
    with pytest.raises(ValueError, match="not an open-QA checkpoint") as error:
        BlockIndex.from_realm_checkpoint(directory, allow_pickle=True)
    assert REPO_ID in str(error.value)


def test_missing_weights_and_bad_records(checkpoint):
    records = checkpoint / "block_records.npy"
    np.save(records, np.array([t.encode() for t in TEXTS[:2]] + [b"\xff\xfe"] + [b"x"] * 3, dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match="row 2 is not valid UTF-8"):
        BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True)
    np.save(records, np.zeros((len(TEXTS), 2), dtype=np.float32))
    with pytest.raises(ValueError, match="one block text per row"):
        BlockIndex.from_realm_checkpoint(checkpoint)
    google_records(records, TEXTS)
    (checkpoint / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        BlockIndex.from_realm_checkpoint(checkpoint, allow_pickle=True)
