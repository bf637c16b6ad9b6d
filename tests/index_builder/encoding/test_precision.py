"""Reduced-precision encoding: the dtype switch, its refusals, resume, and the agreement recorded in the manifest."""

import json

import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from index_builder.encoding.agreement import agreement, sample_rows
from index_builder.encoding.build import build_index
from index_builder.encoding.encode import ENCODING_FILE, encode_blocks
from index_builder.hub.card import card_body
from index_builder.index.manifest import IndexMismatchError, Manifest
from tests.index_builder.encoding.test_encode import direct_embeddings, make_blocks


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bfloat16_runs_a_bfloat16_copy_and_leaves_the_model_in_float32(retriever, tokenizer, tmp_path):
    blocks = make_blocks(9)
    half = encode_blocks(blocks, retriever, tokenizer, tmp_path / "w", max_length=64, dtype="bfloat16",
                         progress=False)
    assert half.plan.dtype == "bfloat16" and half[0:9].dtype == np.float32
    assert all(p.dtype == torch.float32 for p in retriever.parameters())
    full = direct_embeddings(retriever, tokenizer, blocks)
    cosine = cosines(half[0:9], full)
    assert cosine.min() > 0.95 and not np.array_equal(half[0:9], full)  # bfloat16 really ran, and stayed close
    autocast = encode_blocks(blocks, retriever, tokenizer, tmp_path / "a", max_length=64, mixed_precision="bf16",
                             progress=False)[0:9]
    assert not np.array_equal(autocast, half[0:9])  # the two switches are different computations


@pytest.mark.parametrize("settings, message", [
    ({"dtype": "float16"}, "dtype='float16' needs a GPU; on CPU use dtype='bfloat16'"),
    ({"mixed_precision": "fp16"}, "fp16 needs a GPU"),
    ({"dtype": "bfloat16", "mixed_precision": "bf16"}, "both reduce precision; pass one"),
    ({"dtype": "int4"}, r"dtype must be one of \['float32', 'bfloat16', 'float16'\]"),
])
def test_impossible_or_contradictory_precisions_are_refused(retriever, tokenizer, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        encode_blocks(make_blocks(3), retriever, tokenizer, tmp_path / "w", progress=False, **settings)
    assert not (tmp_path / "w").exists()  # refused before the work directory is made


def test_a_run_resumed_in_another_dtype_is_refused(retriever, tokenizer, tmp_path):
    work = tmp_path / "work"
    encode_blocks(make_blocks(12), retriever, tokenizer, work, max_length=32, chunk_size=5, dtype="bfloat16",
                  progress=False)
    with pytest.raises(ValueError, match="differs in dtype"):
        encode_blocks(make_blocks(12), retriever, tokenizer, work, max_length=32, chunk_size=5, progress=False)


def test_a_work_dir_planned_before_dtype_existed_resumes_in_float32(retriever, tokenizer, tmp_path):
    work, blocks = tmp_path / "work", make_blocks(12)
    first = encode_blocks(blocks, retriever, tokenizer, work, max_length=32, chunk_size=5, progress=False)[0:12]
    plan = json.loads((work / ENCODING_FILE).read_text())
    del plan["dtype"]
    (work / ENCODING_FILE).write_text(json.dumps(plan))
    again = encode_blocks(blocks, retriever, tokenizer, work, max_length=32, chunk_size=5, progress=False)
    np.testing.assert_array_equal(again[0:12], first)
    with pytest.raises(ValueError, match="differs in dtype"):
        encode_blocks(blocks, retriever, tokenizer, work, max_length=32, chunk_size=5, dtype="bfloat16",
                      progress=False)


def test_agreement_is_one_for_equal_embeddings_and_falls_when_neighbours_change():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 8)).astype(np.float32)
    same = agreement(reference, reference.copy())
    assert same == {"sample_blocks": 40, "cosine_mean": 1.0, "cosine_min": 1.0, "top5_agreement": 1.0}
    shuffled = agreement(reference, reference[rng.permutation(40)])
    assert shuffled["top5_agreement"] < 0.5 and shuffled["cosine_min"] < 0.9
    assert agreement(reference[:5], reference[:5])["top5_agreement"] is None  # 4 others: no top 5 to compare


def test_the_sample_is_fixed_and_covers_small_corpora_whole():
    np.testing.assert_array_equal(sample_rows(30), np.arange(30))
    rows = sample_rows(10_000)
    assert len(rows) == 512 == len(set(rows)) and np.all(np.diff(rows) > 0) and rows[-1] > 5000
    np.testing.assert_array_equal(rows, sample_rows(10_000))


def test_a_bfloat16_build_records_its_agreement_with_float32(retriever, tokenizer, tmp_path):
    blocks = make_blocks(30)
    index = build_index(blocks, retriever, tokenizer, tmp_path / "index", max_length=64, chunk_size=8,
                        dtype="bfloat16", agreement_sample=20, progress=False)
    record = BlockIndex.load_from_disk(tmp_path / "index").manifest.encoding
    assert record["dtype"] == "bfloat16" and record["autocast"] is False and record["sample_blocks"] == 20
    rows = sample_rows(30, 20)
    full = direct_embeddings(retriever, tokenizer, blocks.select(rows))
    half = index.get_embeddings(rows.tolist())
    assert record["cosine_min"] == pytest.approx(cosines(half, full).min(), abs=1e-5)
    assert 0.95 < record["cosine_mean"] < 1.0 and 0.0 <= record["top5_agreement"] <= 1.0
    assert "bfloat16 (the whole block tower); against float32 on 20 sample blocks" in card_body(
        index.manifest, "me/index", None)
    plain = build_index(blocks, retriever, tokenizer, tmp_path / "plain", max_length=64, progress=False)
    assert plain.manifest.encoding is None and "encoding" not in (tmp_path / "plain" / "manifest.json").read_text()
    autocast = build_index(blocks, retriever, tokenizer, tmp_path / "autocast", max_length=64,
                           mixed_precision="bf16", agreement_sample=0, progress=False)
    assert autocast.manifest.encoding == {"dtype": "bfloat16", "autocast": True, "sample_blocks": 0,
                                          "cosine_mean": None, "cosine_min": None, "top5_agreement": None}


def saved_manifest(tmp_path, retriever, tokenizer):
    build_index(make_blocks(6), retriever, tokenizer, tmp_path / "index", max_length=32, dtype="bfloat16",
                progress=False)
    return tmp_path / "index" / "manifest.json"


def test_old_manifests_load_and_ill_typed_encoding_records_are_refused(retriever, tokenizer, tmp_path):
    path = saved_manifest(tmp_path, retriever, tokenizer)
    fields = json.loads(path.read_text())
    old = {k: v for k, v in fields.items() if k != "encoding"}  # a manifest written before the record existed
    assert Manifest.from_json(json.dumps(old)).encoding is None
    assert Manifest.from_json(json.dumps(fields)).encoding["sample_blocks"] == 6
    for bad, message in [({"top5_agreement": 1.5}, "encoding\\['top5_agreement'\\] is 1.5"),
                         ({"dtype": "<script>"}, "encoding\\['dtype'\\]"),
                         ({"sample_blocks": -1}, "encoding\\['sample_blocks'\\] is -1"),
                         ({"autocast": "no"}, "encoding\\['autocast'\\]")]:
        broken = {**fields, "encoding": {**fields["encoding"], **bad}}
        with pytest.raises(IndexMismatchError, match=message):
            Manifest.from_json(json.dumps(broken))
    with pytest.raises(IndexMismatchError, match="'encoding' is \\[\\]"):
        Manifest.from_json(json.dumps({**fields, "encoding": []}))


def test_an_index_with_blocks_removed_after_a_sampled_build_still_loads(retriever, tokenizer, tmp_path):
    saved_manifest(tmp_path, retriever, tokenizer)  # every one of its 6 blocks was in the sample
    index = BlockIndex.load_from_disk(tmp_path / "index")
    index.remove([0, 1])
    index.save_to_disk(tmp_path / "smaller")
    smaller = BlockIndex.load_from_disk(tmp_path / "smaller")
    assert len(smaller) == 4 and smaller.manifest.encoding["sample_blocks"] == 6
