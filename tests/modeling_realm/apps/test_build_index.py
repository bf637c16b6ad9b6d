"""realm-build-index: corpus file -> blocks -> embeddings -> a loadable BlockIndex, and its errors."""

import json
import re

import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from modeling_realm import RealmRetriever
from modeling_realm.apps.build_index import main
from tests.helpers import VOCAB, perturb_, tiny_config
from tokenization import CorpusError, RealmTokenizerFast


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("retriever")
    torch.manual_seed(0)
    model = RealmRetriever(tiny_config())
    perturb_(model, 2)
    model.save_pretrained(directory)
    RealmTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(directory)
    return directory


def write_corpus(path, documents):
    path.write_text("".join(json.dumps(d) + "\n" for d in documents))
    return path


DOCUMENTS = [{"id": f"d{i}", "heading": f"title {i}", "body": text} for i, text in enumerate([
    "paris is the capital of france. the eiffel tower is in paris.", "the seine is a river in paris.",
    "london is the capital city of england.", "alan turing was a british mathematician.",
    "a cute cat and an adorable dog."])]


def test_cli_builds_a_loadable_index_and_prints_a_summary(model_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "docs.jsonl", DOCUMENTS)
    assert main([str(corpus), "--output", str(tmp_path / "index"), "--model", str(model_dir), "--text-field",
                 "body", "--title-field", "heading", "--doc-id-field", "id", "--max-block-length", "8",
                 "--chunk-size", "3", "--search-param", "rerank=2", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    index = BlockIndex.load_from_disk(tmp_path / "index")
    assert summary["documents"] == 5 and summary["blocks"] == len(index) > 5  # 8-wordpiece blocks split documents
    blocks = index.get_blocks(np.arange(len(index)))
    assert {b["doc_id"] for b in blocks} == {d["id"] for d in DOCUMENTS}
    assert blocks[0]["title"] == "title 0" and "paris" in blocks[0]["text"]
    assert index.manifest.search_params["rerank"] == 2 and index.check_compatible(
        RealmRetriever.from_pretrained(model_dir))


def test_cli_names_a_bad_record_and_keeps_an_existing_index(model_dir, tmp_path):
    good = write_corpus(tmp_path / "good.jsonl", [{"text": d["body"]} for d in DOCUMENTS])
    main([str(good), "--output", str(tmp_path / "index"), "--model", str(model_dir), "--quiet"])
    before = BlockIndex.load_from_disk(tmp_path / "index")
    bad = write_corpus(tmp_path / "bad.jsonl", [{"text": "fine."}, {"text": "fine too."}, {"body": "no text"}])
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 3"):
        main([str(bad), "--output", str(tmp_path / "index"), "--model", str(model_dir), "--overwrite", "--quiet"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        main([str(good), "--output", str(tmp_path / "index"), "--model", str(model_dir), "--quiet"])
    after = BlockIndex.load_from_disk(tmp_path / "index")
    assert len(after) == len(before) and after.get_blocks([0]) == before.get_blocks([0])


def test_cli_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "realm-build-index docs.jsonl --output my-index" in text and "--on-error" in text


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], r"--batch-size: must be >= 1, got 0"),
    (["--chunk-size", "many"], r"--chunk-size: expected a whole number >= 1, got 'many'"),
    (["--max-length", "4"], r"--max-length must be >= 8"),
    (["--max-length", "4096"], r"--max-length 4096 exceeds the \d+ positions of the model"),
    (["--search-param", "nprobe=abc"], r"nprobe='abc': the value must be a number"),
    (["--search-param", "depth=3"], r"unknown search parameter 'depth'"),
    (["--search-param", "nprobe=1.5"], r"nprobe='1.5': expected a whole number >= 1"),
    (["--search-param", "efSearch=64"], r"efSearch=64 does not apply to this index"),  # Flat has no efSearch
    (["--factory", "IVF4,PQ5"], r"--factory IVF4,PQ5.*FAISS cannot build factory"),  # 16-d is not split in 5
    (["--search-param", "precision=float16"], r"precision='float16': expected one of float32, bfloat16"),
    (["--factory", "IVF4,Flat", "--search-param", "precision=bfloat16"], r"precision='bfloat16' applies to Flat"),
    (["--dtype", "float16", "--cpu"], r"--dtype float16 .*needs a GPU; on CPU use dtype='bfloat16'"),
    (["--dtype", "bfloat16", "--mixed-precision", "bf16"], r"both reduce precision; pass one"),
    (["--dtype", "int8"], r"--dtype: invalid choice: 'int8'"),
    (["--agreement-sample", "-1"], r"--agreement-sample: must be >= 0, got -1"),
])
def test_arguments_are_checked_before_the_corpus_is_read(model_dir, tmp_path, capsys, flags, message):
    """The corpus path does not even exist: every bad argument must be reported before it would be read."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "not-read.jsonl"), "--output", str(tmp_path / "index"), "--model", str(model_dir),
              *flags])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "index").exists()


def test_an_output_that_cannot_be_replaced_is_refused_before_any_work(model_dir, tmp_path, capsys):
    taken = tmp_path / "notes"
    taken.mkdir()
    (taken / "mine.txt").write_text("not an index")
    with pytest.raises(FileExistsError, match="exists and is not a BlockIndex; refusing to replace it"):
        main([str(tmp_path / "not-read.jsonl"), "--output", str(taken), "--model", str(model_dir), "--overwrite"])
    assert (taken / "mine.txt").read_text() == "not an index"


def test_cli_builds_a_lexical_part_or_adds_one_to_an_existing_index(model_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "docs.jsonl", DOCUMENTS)
    base = [str(corpus), "--model", str(model_dir), "--text-field", "body", "--title-field", "heading", "--quiet"]
    assert main(base + ["--output", str(tmp_path / "with"), "--lexical", "bm25", "--bm25-b", "0.5"]) == 0
    built = BlockIndex.load_from_disk(tmp_path / "with")
    assert built.manifest.lexical["b"] == 0.5 and json.loads(capsys.readouterr().out.splitlines()[-1])["lexical"]
    assert main(base + ["--output", str(tmp_path / "dense")]) == 0
    assert not BlockIndex.load_from_disk(tmp_path / "dense").has_lexical
    blocks_before = (tmp_path / "dense" / "blocks.arrow").read_bytes()
    assert main(["--lexical", "bm25", "--output", str(tmp_path / "dense"), "--stopwords", "none", "--quiet"]) == 0
    added = BlockIndex.load_from_disk(tmp_path / "dense")
    assert (tmp_path / "dense" / "blocks.arrow").read_bytes() == blocks_before  # nothing re-encoded
    assert added.manifest.lexical["stopwords"] is None
    _, ids = added.search(query_texts=["turing mathematician"], k=1)
    assert added.get_blocks(ids[0])[0]["doc_id"] == "3"


@pytest.mark.parametrize("flags, message", [
    (["--lexical", "bm25", "--bm25-b", "2"], r"--lexical options: .*b is 2\.0"),
    (["--lexical", "bm25", "--stopwords", "klingon"], "stopwords is 'klingon'"),
    ([], "pass a corpus to index"),
])
def test_lexical_arguments_are_checked_before_any_work(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main(flags + ["--output", str(tmp_path / "missing")])
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "missing").exists()


def test_adding_a_lexical_part_needs_an_existing_index(tmp_path, capsys):
    (tmp_path / "stranger").mkdir()
    with pytest.raises(SystemExit):
        main(["--lexical", "bm25", "--output", str(tmp_path / "stranger")])
    assert "not an existing BlockIndex" in capsys.readouterr().err


def test_cli_encodes_in_bfloat16_and_records_the_agreement(model_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "docs.jsonl", DOCUMENTS)
    assert main([str(corpus), "--output", str(tmp_path / "index"), "--model", str(model_dir), "--text-field", "body",
                 "--max-block-length", "8", "--dtype", "bfloat16", "--agreement-sample", "4", "--cpu", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    encoding = BlockIndex.load_from_disk(tmp_path / "index").manifest.encoding
    assert encoding["dtype"] == "bfloat16" and encoding["sample_blocks"] == 4 < summary["blocks"]
    assert summary["encoding"] == encoding and 0.9 < encoding["cosine_min"] <= encoding["cosine_mean"] <= 1.0
