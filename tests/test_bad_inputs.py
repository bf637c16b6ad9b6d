"""The bad-input catalogue (issue 7, item 1): one table of what users get wrong, and what they see when they do.

Each `Case` builds a bad input under `tmp_path` with public APIs and returns the call that meets it. The expected
outcome is either an exception whose message names the problem and the fix (`error` + `match`), or a documented
recovery (`recovery`: a regex the logs/warnings must match, and/or `check` on the returned value). Either way every
file that existed before the call (earlier outputs, the bad input itself) must be unchanged afterwards; an error
must also leave no new files behind. Entries marked `xfail` are known gaps in the library, kept strict so that the
fix flips them.
"""

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub.errors import StrictDataclassError

from index_builder import BlockIndex
from modeling_realm import RealmConfig, RealmEmbedder, RealmForOpenQA, RealmRetriever
from modeling_realm.models.loading import load_retriever
from modeling_realm.openqa.answers import compile_answer_pattern, load_qa_file
from tests.helpers import PARITY, VOCAB, tiny_config
from tokenization import RealmTokenizerFast, load_corpus, split_into_blocks

OPENQA = PARITY / "tiny" / "RealmForOpenQA"
DIM = 16  # retriever_proj_size of the tiny configs


@dataclass(frozen=True)
class Case:
    """One catalogue entry: `run(tmp_path)` builds the bad input and returns the call that meets it."""

    id: str
    area: str  # corpus, qa, config, checkpoint, index, query
    action: str  # what the user did
    run: Callable[[Path], Callable[[], object]]
    error: type | None = None  # expected exception type ...
    match: str = ""  # ... and a regex its message must match (the problem and the fix)
    recovery: str = ""  # or: a regex the logged messages / warnings must match
    check: Callable[[object], bool] | None = None  # and a test of what the call returned
    xfail: str = ""  # a known gap in the library: what happens instead


# ---------------------------------------------------------------- builders


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _jsonl(path: Path, records) -> Path:
    return _write(path, "".join(json.dumps(record) + "\n" for record in records))


def _corpus(tmp, records, **kwargs):
    path = _jsonl(tmp / "corpus.jsonl", records)
    return lambda: load_corpus(path, cache_dir=tmp / "cache", **kwargs)


def _corpus_bytes(tmp, content, name="corpus.jsonl", **kwargs):
    path = _write(tmp / name, content)
    return lambda: load_corpus(path, cache_dir=tmp / "cache", **kwargs)


def _qa(tmp, records, name="qa.jsonl", **kwargs):
    path = _write(tmp / name, records) if isinstance(records, (str, bytes)) else _jsonl(tmp / name, records)
    return lambda: load_qa_file(path, **kwargs)


def _tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


def _big_document(tmp):
    """A single 5 MB document, split into blocks of <= 288 wordpieces."""
    words = "alan turing was a british mathematician and a pioneer of modern computer science . "
    path = _jsonl(tmp / "corpus.jsonl", [{"title": "big", "text": words * (5_000_000 // len(words) + 1)}])
    return lambda: split_into_blocks(load_corpus(path, cache_dir=tmp / "cache"), _tokenizer())


INVISIBLE = "\u200b\u200c\ufeff\x00 \u2060"  # zero-width space and non-joiner, BOM, NUL, word joiner


def _invisible_documents(tmp):
    """A corpus of one real document, one of invisible characters only, and one with an invisible sentence."""
    path = _jsonl(tmp / "corpus.jsonl", [{"text": "Ada Lovelace wrote the first program."}, {"text": INVISIBLE},
                                         {"text": "Grace Hopper built a compiler.\n" + INVISIBLE}])
    return lambda: split_into_blocks(load_corpus(path, cache_dir=tmp / "cache"), _tokenizer())


def _only_visible_blocks(blocks) -> bool:
    return set(blocks["doc_id"]) == {"0", "2"} and all(text.strip(INVISIBLE) for text in blocks["text"]) and \
        min(blocks["num_tokens"]) > 0


def _blocks_cover_the_document(blocks) -> bool:
    return len(blocks) > 1000 and max(blocks["num_tokens"]) <= 288 and set(blocks["doc_id"]) == {"0"}


def _embeddings(n=6, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _saved_index(tmp, lexical: bool = False) -> Path:
    texts = [f"block {i}" for i in range(6)]
    return BlockIndex.from_arrays(_embeddings(), texts, progress=False,
                                  lexical="bm25" if lexical else None).save_to_disk(tmp / "index")


def _damaged_index(tmp, damage, lexical: bool = False):
    """A saved index with `damage(directory)` applied, then loaded."""
    directory = _saved_index(tmp, lexical)
    damage(directory)
    return lambda: BlockIndex.load_from_disk(directory)


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(file_name: str, **changes):
    """A damage function that updates the JSON file `file_name` of a directory with `changes`."""
    def damage(directory: Path):
        record = json.loads((directory / file_name).read_text())
        record.update(changes)
        (directory / file_name).write_text(json.dumps(record))

    return damage


def _edit_manifest(edit):
    """A damage function that rewrites the parsed manifest.json of a directory with `edit(record)`."""
    def damage(directory: Path):
        record = json.loads((directory / "manifest.json").read_text())
        edit(record)
        (directory / "manifest.json").write_text(json.dumps(record))

    return damage


def _list_file(name: str):
    """A damage function: the manifest lists one more file, `name` (outside the index), with a wrong size."""
    return _edit_manifest(lambda record: record["files"].update({name: {"bytes": 1, "xxh3_64": "0" * 16}}))


def _victim_outside(tmp) -> Path:
    """A file of the user's next to the index, which no index may read or delete."""
    return _write(tmp / "victim.txt", "the user's own file")


def _outside_name_index(tmp):
    _victim_outside(tmp)
    return _damaged_index(tmp, _list_file("../victim.txt"))


def _missing_index_beside_a_stranger(tmp):
    """`index` is missing; `index.previous-old` is a directory of the user's, not one realm-hf set aside."""
    stranger = BlockIndex.from_arrays(_embeddings(), ["x"] * 6, progress=False).save_to_disk(tmp / "index.previous-old")
    return lambda: BlockIndex.load_from_disk(stranger.parent / "index")


def _nested_manifest(directory: Path):
    (directory / "manifest.json").write_text('{"format_version": 1, "files": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _symlink_outside(tmp):
    """blocks.arrow replaced by a link to an identical copy outside the index."""
    directory = _saved_index(tmp)
    outside = tmp / "elsewhere.arrow"
    outside.write_bytes((directory / "blocks.arrow").read_bytes())
    (directory / "blocks.arrow").unlink()
    (directory / "blocks.arrow").symlink_to(outside)
    return lambda: BlockIndex.load_from_disk(directory)


def _hub_layout_with_shard(tmp, shard_name: str):
    """A local Hub-layout index folder whose manifest names `shard_name` as a shard, loaded by from_pretrained."""
    from index_builder.hub.repo import write_hub_folder

    index = BlockIndex.from_arrays(_embeddings(), [f"block {i}" for i in range(6)], progress=False)
    folder = tmp / "hub-folder"
    folder.mkdir()
    write_hub_folder(index, folder)
    _victim_outside(tmp)

    def rename(record):
        (old,) = [name for name in record["files"] if name.endswith(".parquet")]
        record["files"][shard_name] = record["files"].pop(old)
        record["shards"] = [shard_name]

    _edit_manifest(rename)(folder)
    return lambda: BlockIndex.from_pretrained(str(folder), cache_dir=tmp / "converted")


def _build_over_index(tmp, embeddings):
    """`BlockIndex.build` into the directory of an existing good index, with `embeddings` for 6 blocks."""
    directory = _saved_index(tmp)
    blocks = datasets.Dataset.from_dict({"block_id": list(range(6)), "doc_id": [str(i) for i in range(6)],
                                         "title": [""] * 6, "text": [f"new {i}" for i in range(6)]})
    return lambda: BlockIndex.build(blocks, embeddings, directory, overwrite=True, progress=False)


def _nan_embeddings():
    embeddings = _embeddings()
    embeddings[2, 3] = np.nan
    return embeddings


def _search(tmp, queries, k):
    index = BlockIndex.load_from_disk(_saved_index(tmp))
    return lambda: index.search(queries, k)


def _openqa(rows=None):
    """The tiny 4.x open-QA fixture with a Flat index of its first `rows` block embeddings and the test tokenizer."""
    cases = json.loads((OPENQA / "openqa_cases.json").read_text())
    model = RealmForOpenQA.from_pretrained(OPENQA).eval()
    embeddings, texts = model.block_emb.numpy(), cases["block_texts"]
    index = BlockIndex.from_arrays(embeddings[:rows], texts[:rows], progress=False)
    model.index, model.tokenizer = index, _tokenizer()
    return model


def _answer(question, **kwargs):
    return lambda tmp: (lambda model: lambda: model.answer(question, **kwargs))(_openqa())


def _checkpoint(tmp, edit=None, cls=RealmEmbedder) -> Path:
    """A saved tiny checkpoint of `cls`, with `edit(directory)` applied."""
    directory = tmp / "checkpoint"
    cls(tiny_config()).save_pretrained(directory, model_card=False)
    if edit is not None:
        edit(directory)
    return directory


def _legacy_checkpoint(tmp, **config_changes) -> Path:
    """The tiny RealmEmbedder written by transformers 4.57.6 (config.json + pytorch_model.bin), config edited."""
    directory = tmp / "legacy"
    directory.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (directory / name).write_bytes((PARITY / "tiny" / "RealmEmbedder" / name).read_bytes())
    _edit_json("config.json", **config_changes)(directory)
    return directory


def _without_tokenizer(tmp):
    model = _openqa()
    model.tokenizer = None  # else save_pretrained saves the attached tokenizer too
    directory = tmp / "model"
    model.save_pretrained(directory, model_card=False)
    assert not list(directory.glob("*vocab*")) and not list(directory.glob("tokenizer*"))
    reloaded = RealmForOpenQA.from_pretrained(directory, index=model.index)
    return lambda: reloaded.answer("who was alan turing?")


def _other_embedder(tmp):
    built_with, query_with = RealmRetriever(tiny_config()), RealmRetriever(tiny_config())
    index = BlockIndex.from_arrays(_embeddings(), [f"b{i}" for i in range(6)], embedder=built_with, progress=False)
    return lambda: setattr(query_with, "index", index)


def _long_question_with_context(tmp):
    from transformers import pipeline

    model = _openqa()
    qa = pipeline("open-domain-qa", model=model, tokenizer=model.tokenizer)
    question = " ".join(["where"] * 10_000) + " is the seine?"
    return lambda: qa(question=question, context="the seine flows through paris. " * 4)


SQUAD_WITHOUT_ANSWERS = {"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q1", "question": "who?",
                                                                            "answers": []}]}]}]}
LONG_QUESTION = " ".join(["who"] * 10_000) + " was alan turing?"


# ---------------------------------------------------------------- the catalogue

ERROR_FIX = "Fix the record, or pass on_error='skip'"

CATALOGUE = [
    # ------------------------------------------------------------ corpora
    Case("corpus-empty-file", "corpus", "load_corpus on an empty .jsonl file",
         lambda tmp: _corpus_bytes(tmp, b""), error=ValueError, match="holds no records; a corpus needs at least one"),
    Case("corpus-empty-csv", "corpus", "load_corpus on an empty .csv (no header)",
         lambda tmp: _corpus_bytes(tmp, b"", name="corpus.csv"), error=ValueError,
         match="is empty: a csv corpus needs a header line"),
    Case("corpus-renamed-text-field", "corpus", "the text lives in a field called 'body'",
         lambda tmp: _corpus(tmp, [{"title": "a", "body": "x"}]), error=ValueError,
         match=r"no 'text' field.*pass text_field=<the field holding the document text>"),
    Case("corpus-renamed-csv-column", "corpus", "a csv whose header says 'title,body'",
         lambda tmp: _corpus_bytes(tmp, b"title,body\na,x\n", name="corpus.csv"), error=ValueError,
         match=r"no 'text' field; the fields are \['title', 'body'\]\. Pass text_field="),
    Case("corpus-missing-field-one-record", "corpus", "one record of several lacks 'text'",
         lambda tmp: _corpus(tmp, [{"text": "x"}, {"title": "y"}]), error=ValueError,
         match=rf"line 2: no 'text' field .*pass text_field=.*{ERROR_FIX}"),
    Case("corpus-non-utf8", "corpus", "a Latin-1 byte in a .jsonl file",
         lambda tmp: _corpus_bytes(tmp, b'{"text": "caf\xe9"}\n'), error=ValueError,
         match=r"line 1: not valid UTF-8 \(byte 0xe9.*re-encode the file as UTF-8"),
    Case("corpus-non-utf8-skip", "corpus", "the same with on_error='skip'",
         lambda tmp: _corpus_bytes(tmp, b'{"text": "caf\xe9"}\n{"text": "ok"}\n', on_error="skip"),
         recovery=r"skipped 1 bad records of 2 \(kept 1 documents\).*not valid UTF-8",
         check=lambda corpus: corpus["text"] == ["ok"]),
    Case("corpus-invalid-json", "corpus", "a truncated JSON line",
         lambda tmp: _corpus_bytes(tmp, b'{"text": "a"}\n{"text": \n'), error=ValueError,
         match=rf"line 2: invalid JSON.*{ERROR_FIX}"),
    Case("corpus-5mb-document", "corpus", "one 5 MB document",
         _big_document, check=_blocks_cover_the_document),
    Case("corpus-invisible-text", "corpus", "documents and sentences of zero-width, BOM and NUL characters only",
         _invisible_documents, check=_only_visible_blocks),
    Case("corpus-duplicate-doc-ids", "corpus", "two records with doc_id 7",
         lambda tmp: _corpus(tmp, [{"doc_id": 7, "text": "a"}, {"doc_id": "7", "text": "b"}]), error=ValueError,
         match=r"line 2: duplicate doc_id '7'.*on_error='skip' keeps the first"),
    Case("corpus-duplicate-doc-ids-skip", "corpus", "the same with on_error='skip'",
         lambda tmp: _corpus(tmp, [{"doc_id": 7, "text": "a"}, {"doc_id": 7, "text": "b"}], on_error="skip"),
         recovery="skipped 1 bad records of 2.*duplicate doc_id '7'", check=lambda corpus: corpus["text"] == ["a"]),
    Case("corpus-text-not-string", "corpus", "'text' is a number",
         lambda tmp: _corpus(tmp, [{"text": 42}]), error=ValueError,
         match=rf"'text' is a int \(42\), expected a string.*{ERROR_FIX}"),
    Case("corpus-doc-id-wrong-type", "corpus", "doc_id is a list",
         lambda tmp: _corpus(tmp, [{"doc_id": [1], "text": "a"}]), error=ValueError,
         match=r"'doc_id' is a list .*expected a string or an integer \(or pass doc_id_field=None"),
    Case("corpus-missing-path", "corpus", "a misspelt corpus path",
         lambda tmp: lambda: load_corpus(tmp / "corpsu.jsonl"), error=FileNotFoundError,
         match="No corpus file or directory at .*check the path"),
    Case("corpus-unknown-format", "corpus", "a .xlsx corpus",
         lambda tmp: _corpus_bytes(tmp, b"PK", name="corpus.xlsx"), error=ValueError,
         match=r"unknown corpus format '\.xlsx'; use one of"),
    # ------------------------------------------------------------ QA files
    Case("qa-no-answers", "qa", "a question with an empty answer list",
         lambda tmp: _qa(tmp, [{"question": "who?", "answer": []}]), error=ValueError,
         match=rf"line 1: field 'answer' must be a non-empty list of answer strings.*{ERROR_FIX}"),
    Case("qa-squad-no-answers", "qa", "a SQuAD JSON question without answers",
         lambda tmp: _qa(tmp, json.dumps(SQUAD_WITHOUT_ANSWERS), name="dev.json"), error=ValueError,
         match=r"paragraph 0, qas\[0\]: field 'answer' must be a non-empty list.*Fix the record"),
    Case("qa-empty-question", "qa", "a record with question ''",
         lambda tmp: _qa(tmp, [{"question": "  ", "answer": ["x"]}]), error=ValueError,
         match=rf"line 1: empty or non-string question.*{ERROR_FIX}"),
    Case("qa-invalid-regex", "qa", "a CuratedTREC pattern that does not compile (match='regex')",
         lambda tmp: _qa(tmp, [{"question": "who?", "answer": ["(unclosed"]}], match="regex"), error=ValueError,
         match=rf"answer pattern '\(unclosed' does not compile.*{ERROR_FIX}"),
    Case("qa-invalid-regex-pattern", "qa", "compile_answer_pattern('[a-')",
         lambda tmp: lambda: compile_answer_pattern("[a-"), error=ValueError,
         match=r"Invalid answer regular expression '\[a-'.*Fix the pattern"),
    Case("qa-renamed-answer-field", "qa", "answers under 'answers' instead of 'answer'",
         lambda tmp: _qa(tmp, [{"question": "who?", "answers": ["x"]}]), error=ValueError,
         match=r"no field 'answer' .*pass answer_field=<the right field name>"),
    Case("qa-skip-bad-records", "qa", "on_error='skip' over one bad record of two",
         lambda tmp: _qa(tmp, [{"question": "", "answer": ["x"]}, {"question": "who?", "answer": ["y"]}],
                         on_error="skip"),
         recovery=r"skipped 1 bad record\(s\) of 2 \(first: line 1\)",
         check=lambda records: [r["question"] for r in records] == ["who?"]),
    Case("qa-empty-file", "qa", "an empty QA file",
         lambda tmp: _qa(tmp, ""), error=ValueError, match="no usable QA records; check that it is a QA file"),
    Case("qa-non-utf8", "qa", "a Latin-1 byte in a QA file",
         lambda tmp: _qa(tmp, b'{"question": "caf\xe9?", "answer": ["x"]}\n'), error=ValueError,
         match="line 1.*UTF-8.*re-encode"),
    # ------------------------------------------------------------ configs
    Case("config-heads-not-divisor", "config", "hidden_size=32 with num_attention_heads=5",
         lambda tmp: lambda: tiny_config(num_attention_heads=5), error=StrictDataclassError,
         match=r"hidden_size \(32\) must be a multiple of .*num_attention_heads \(5\); change one"),
    Case("config-reader-beam-over-searcher", "config", "reader_beam_size=10 > searcher_beam_size=3",
         lambda tmp: lambda: tiny_config(reader_beam_size=10), error=StrictDataclassError,
         match=r"reader_beam_size \(10\) cannot exceed RealmConfig.searcher_beam_size \(3\)"),
    Case("config-span-over-reader-len", "config", "max_span_width=30 > reader_seq_len=24",
         lambda tmp: lambda: tiny_config(max_span_width=30), error=StrictDataclassError,
         match=r"max_span_width \(30\) cannot exceed RealmConfig.reader_seq_len \(24\)"),
    Case("config-zero-size", "config", "retriever_proj_size=0",
         lambda tmp: lambda: tiny_config(retriever_proj_size=0), error=StrictDataclassError,
         match="retriever_proj_size must be a positive integer, got 0"),
    Case("config-wrong-type", "config", "hidden_size='32' (a string)",
         lambda tmp: lambda: tiny_config(hidden_size="32"), error=StrictDataclassError,
         match="hidden_size.*expected int, got str"),
    Case("config-unknown-activation", "config", "hidden_act='swishy'",
         lambda tmp: lambda: tiny_config(hidden_act="swishy"), error=StrictDataclassError,
         match="hidden_act='swishy' is not a known activation; use one of"),
    Case("config-unknown-field", "config", "a misspelt field: RealmConfig(hiden_size=64)",
         lambda tmp: lambda: RealmConfig(hiden_size=64), recovery="unknown field 'hiden_size': did you mean "
         "'hidden_size'\\? it is kept as an attribute", check=lambda config: config.hidden_size == 768),
    Case("config-json-inconsistent-sizes", "config", "config.json says hidden_size=64, the weights are 32-d",
         lambda tmp: (lambda d: lambda: RealmEmbedder.from_pretrained(d))(
             _checkpoint(tmp, _edit_json("config.json", hidden_size=64))), error=ValueError,
         match="config.json says hidden_size=64, but the weights in model.safetensors were saved with hidden_size=32"
               ".*Restore the config.json saved with these weights"),
    Case("config-json-million-layers", "config", "config.json says num_hidden_layers=1000000 next to 2-layer weights",
         lambda tmp: (lambda d: lambda: RealmEmbedder.from_pretrained(d))(
             _checkpoint(tmp, _edit_json("config.json", num_hidden_layers=1_000_000))), error=ValueError,
         match=r"config.json says num_hidden_layers=1000000, but the weights in model.safetensors hold 2 layers"),
    Case("config-json-one-layer-too-many", "config", "config.json says 3 layers, the weights hold 2",
         lambda tmp: (lambda d: lambda: RealmEmbedder.from_pretrained(d))(
             _checkpoint(tmp, _edit_json("config.json", num_hidden_layers=3))), error=ValueError,
         match=r"says num_hidden_layers=3, but the weights in model.safetensors hold 2 layers \(realm.encoder\)"),
    Case("config-legacy-bin-inconsistent-sizes", "config", "a legacy pytorch_model.bin with hidden_size=64 in config",
         lambda tmp: (lambda d: lambda: RealmEmbedder.from_pretrained(d))(_legacy_checkpoint(tmp, hidden_size=64)),
         error=ValueError, match=r"config.json says hidden_size=64, but the weights in pytorch_model.bin were saved "
                                 r"with hidden_size=32"),
    Case("config-absurd-size", "config", "RealmConfig(num_hidden_layers=1000000) built directly",
         lambda tmp: lambda: RealmConfig(num_hidden_layers=1_000_000), error=StrictDataclassError,
         match=r"num_hidden_layers=1000000 exceeds 1,024"),
    Case("config-absurd-parameters", "config", "a config of 65536 hidden x 1000 layers (some 17 trillion weights)",
         lambda tmp: lambda: RealmConfig(hidden_size=65536, num_attention_heads=64, num_hidden_layers=1000),
         error=StrictDataclassError, match=r"BERT backbone of about [\d,]+ parameters.*more than 20,000,000,000"),
    # ------------------------------------------------------------ checkpoints
    Case("checkpoint-truncated", "checkpoint", "from_pretrained on a half-downloaded model.safetensors",
         lambda tmp: (lambda d: lambda: RealmEmbedder.from_pretrained(d))(
             _checkpoint(tmp, lambda d: _truncate(d / "model.safetensors"))), error=ValueError,
         match="model.safetensors.*(truncated|incomplete).*re-download"),
    Case("checkpoint-missing-config", "checkpoint", "a checkpoint directory without config.json",
         lambda tmp: (lambda d: lambda: RealmEmbedder.from_pretrained(d))(
             _checkpoint(tmp, lambda d: (d / "config.json").unlink())), error=OSError, match="config.json"),
    Case("checkpoint-wrong-architecture", "checkpoint", "RealmForOpenQA.from_pretrained(a RealmEmbedder checkpoint)",
         lambda tmp: (lambda d: lambda: RealmForOpenQA.from_pretrained(d))(_checkpoint(tmp)), error=ValueError,
         match="RealmEmbedder.*RealmForOpenQA"),
    Case("checkpoint-reader-as-retriever", "checkpoint", "load_retriever on a RealmReader checkpoint",
         lambda tmp: lambda: load_retriever(str(PARITY / "tiny" / "RealmReader")), error=ValueError,
         match="holds a RealmReader, which has no block embedder. Pass a RealmRetriever, RealmScorer or"),
    Case("checkpoint-not-realm", "checkpoint", "load_retriever on a GPT-2 checkpoint",
         lambda tmp: (lambda d: lambda: load_retriever(str(d)))(
             _write(tmp / "gpt2" / "config.json", json.dumps({"model_type": "gpt2"})).parent), error=ValueError,
         match="is a 'gpt2' model; pass a REALM retriever, scorer or embedder checkpoint"),
    Case("checkpoint-missing-tokenizer", "checkpoint", "answer() with a model saved without tokenizer files",
         _without_tokenizer, error=ValueError, match="tokenizer.*(tokenizer=|save_pretrained)"),
    # ------------------------------------------------------------ indices
    Case("index-missing-beside-a-stranger", "index", "load_from_disk('index') with only index.previous-old present",
         _missing_index_beside_a_stranger, error=FileNotFoundError, match=r"No BlockIndex directory at .*index"),
    Case("index-manifest-names-outside", "index", "a manifest listing ../victim.txt (with a wrong size)",
         _outside_name_index, error=ValueError,
         match=r"not a valid BlockIndex manifest: a BlockIndex directory lists exactly \['blocks.arrow', "
               r"'index.faiss'\].*Rebuild or re-download"),
    Case("index-manifest-names-device", "index", "a manifest listing /dev/zero",
         lambda tmp: _damaged_index(tmp, _list_file("/dev/zero")), error=ValueError,
         match=r"lists exactly \['blocks.arrow', 'index.faiss'\], this one \['/dev/zero'"),
    Case("index-manifest-no-files", "index", "a manifest whose files map is empty (no checks would run)",
         lambda tmp: _damaged_index(tmp, _edit_manifest(lambda r: r.update(files={}))), error=ValueError,
         match=r"lists exactly \['blocks.arrow', 'index.faiss'\], this one \[\]"),
    Case("index-manifest-wrong-types", "index", "a manifest with a string size and a list dimension",
         lambda tmp: _damaged_index(tmp, _edit_manifest(lambda r: r.update(dimension=[16], num_blocks="6"))),
         error=ValueError, match=r"'num_blocks' is '6', expected an integer >= 0; 'dimension' is \[16\]"),
    Case("index-manifest-bad-file-entry", "index", "a manifest whose file entry is a string",
         lambda tmp: _damaged_index(tmp, _edit_manifest(lambda r: r["files"].update({"index.faiss": "x"}))),
         error=ValueError, match=r"files\['index.faiss'\] is 'x', expected"),
    Case("index-manifest-deeply-nested", "index", "a manifest nested 100,000 levels deep",
         lambda tmp: _damaged_index(tmp, _nested_manifest), error=ValueError,
         match=r"is not valid JSON \(RecursionError.*rebuild or re-download"),
    Case("index-manifest-a-list", "index", "a manifest.json that holds a JSON list",
         lambda tmp: _damaged_index(tmp, lambda d: (d / "manifest.json").write_text("[1, 2]")), error=ValueError,
         match=r"holds a JSON list, not an object"),
    Case("index-manifest-is-a-device", "index", "manifest.json replaced by a link to /dev/zero",
         lambda tmp: _damaged_index(tmp, lambda d: ((d / "manifest.json").unlink(),
                                                    (d / "manifest.json").symlink_to("/dev/zero"))),
         error=ValueError, match=r"manifest.json is not a regular file of at most \d+ bytes"),
    Case("index-file-links-outside", "index", "blocks.arrow replaced by a link to a copy outside the index",
         _symlink_outside, error=ValueError, match=r"blocks.arrow leads outside the index"),
    Case("index-hub-shard-outside", "index", "a Hub-layout manifest naming the shard ../other/x.parquet",
         lambda tmp: _hub_layout_with_shard(tmp, "../other/x.parquet"), error=ValueError,
         match=r"file names \['../other/x.parquet'\] are not shards data/<name>.parquet"),
    Case("index-hub-shard-absolute", "index", "a Hub-layout manifest naming the shard /etc/passwd",
         lambda tmp: _hub_layout_with_shard(tmp, "/etc/passwd"), error=ValueError,
         match=r"file names \['/etc/passwd'\] are not shards"),
    Case("index-hub-layout-load-from-disk", "index", "load_from_disk on a Hub-layout folder",
         lambda tmp: (lambda f: lambda: BlockIndex.load_from_disk(f))(
             _hub_layout_with_shard(tmp, "data/train-00000-of-00001.parquet") and tmp / "hub-folder"),
         error=ValueError, match=r"Hub layout.*BlockIndex.from_pretrained"),
    Case("index-corrupted-file", "index", "load_from_disk after a byte of index.faiss flipped",
         lambda tmp: _damaged_index(tmp, lambda d: _flip_byte(d / "index.faiss")), error=ValueError,
         match=r"index.faiss does not match the checksum in the manifest.*Rebuild or re-download"),
    Case("index-truncated-blocks", "index", "load_from_disk with blocks.arrow cut in half",
         lambda tmp: _damaged_index(tmp, lambda d: _truncate(d / "blocks.arrow")), error=ValueError,
         match=r"blocks.arrow has \d+ bytes but the manifest says \d+.*Rebuild or re-download"),
    Case("index-missing-file", "index", "load_from_disk with index.faiss deleted",
         lambda tmp: _damaged_index(tmp, lambda d: (d / "index.faiss").unlink()), error=ValueError,
         match="index.faiss is missing.*(rebuild|re-download)"),
    Case("index-manifest-mismatch", "index", "manifest.json edited to claim 7 blocks",
         lambda tmp: _damaged_index(tmp, _edit_json("manifest.json", num_blocks=7)), error=ValueError,
         match=r"inconsistent: index.faiss holds 6 vectors, the manifest says 7.*Rebuild or re-download"),
    Case("index-manifest-other-version", "index", "a manifest from another format version",
         lambda tmp: _damaged_index(tmp, _edit_json("manifest.json", format_version=99)), error=ValueError,
         match=r"format_version 99; this package reads versions \[1, 2\]. Rebuild the index"),
    Case("index-lexical-over-other-blocks", "index", "a manifest whose lexical part names other blocks' digest",
         lambda tmp: _damaged_index(tmp, _edit_manifest(lambda r: r["lexical"].update(blocks_digest="0" * 32)),
                                    lexical=True),
         error=ValueError, match="lexical part was built over other blocks.*Rebuild or re-download"),
    Case("query-lexical-without-lexical-part", "query", "search by text an index that has no lexical part",
         lambda tmp: (lambda index: lambda: index.search(k=2, query_texts=["block"], mode="lexical"))(
             BlockIndex.load_from_disk(_saved_index(tmp))),
         error=ValueError, match=r"needs a lexical part.*add_lexical\(\).*--lexical bm25.*mode='dense'"),
    Case("query-lexical-no-indexed-term", "query", "a lexical search for words no block holds",
         lambda tmp: (lambda index: lambda: index.search(k=2, query_texts=["zzyzx"], mode="lexical"))(
             BlockIndex.load_from_disk(_saved_index(tmp, lexical=True))),
         error=ValueError, match="has no term that occurs in the indexed blocks.*mode='dense' or 'hybrid'"),
    Case("query-hybrid-weight-out-of-range", "query", "a hybrid search with weight=2",
         lambda tmp: (lambda index: lambda: index.search(_embeddings(1), 2, query_texts=["block"], weight=2))(
             BlockIndex.load_from_disk(_saved_index(tmp, lexical=True))),
         error=ValueError, match=r"weight \(the dense side's share\) must be a number in \[0, 1\], got 2"),
    Case("index-manifest-missing", "index", "a directory without manifest.json",
         lambda tmp: _damaged_index(tmp, lambda d: (d / "manifest.json").unlink()), error=FileNotFoundError,
         match="has no manifest.json: it is not a BlockIndex directory.*Build one with BlockIndex.save_to_disk"),
    Case("index-wrong-dimension-query", "index", "search a 16-d index with 8-d query embeddings",
         lambda tmp: _search(tmp, np.ones((1, 8), np.float32), 1), error=ValueError,
         match=r"Queries have 8 dimensions but the index holds 16-d.*\b(rebuild|re-embed|query with)\b"),
    Case("index-wrong-dimension-model", "index", "attach an 8-d index to a model with 16-d queries",
         lambda tmp: (lambda index: lambda: setattr(_openqa(), "index", index))(
             BlockIndex.from_arrays(_embeddings(dim=8), [f"b{i}" for i in range(6)], progress=False)),
         error=ValueError, match="8-d embeddings but RealmForOpenQA produces 16-d .*rebuild the index"),
    Case("index-other-embedder", "index", "query an index built by other block-embedder weights",
         _other_embedder, recovery="weights differ from RealmRetriever's block tower.*otherwise rebuild the index"),
    Case("index-save-over-other-directory", "index", "save_to_disk into a directory of other files",
         lambda tmp: (lambda d: lambda: BlockIndex.from_arrays(_embeddings(), list("abcdef"), progress=False)
                      .save_to_disk(d))(_write(tmp / "results" / "notes.txt", "keep me").parent),
         error=FileExistsError, match="is not a BlockIndex; refusing to replace it. Choose another path"),
    Case("index-save-no-overwrite", "index", "save_to_disk(..., overwrite=False) over an index",
         lambda tmp: (lambda d: lambda: BlockIndex.from_arrays(_embeddings(), list("abcdef"), progress=False)
                      .save_to_disk(d, overwrite=False))(_saved_index(tmp)),
         error=FileExistsError, match="already exists; pass overwrite=True"),
    Case("index-build-length-mismatch", "index", "build over an index with 6 blocks but 4 embeddings",
         lambda tmp: _build_over_index(tmp, _embeddings(n=4)), error=ValueError,
         match="6 blocks but 4 embeddings; they must match row for row"),
    Case("index-build-nan", "index", "build over an index with NaN embeddings",
         lambda tmp: _build_over_index(tmp, _nan_embeddings()), error=ValueError, match="NaN"),
    Case("index-nan-embeddings", "index", "from_arrays with a NaN embedding",
         lambda tmp: lambda: BlockIndex.from_arrays(_nan_embeddings(), list("abcdef"), progress=False),
         error=ValueError, match=r"contain NaN or inf in rows \[2\].*Check the embedder's dtype"),
    Case("index-texts-count", "index", "from_arrays with 4 texts for 6 embeddings",
         lambda tmp: lambda: BlockIndex.from_arrays(_embeddings(), list("abcd"), progress=False),
         error=ValueError, match="Got 4 texts for 6 embeddings; give one per embedding"),
    Case("index-empty", "index", "from_arrays with no rows",
         lambda tmp: lambda: BlockIndex.from_arrays(np.zeros((0, DIM), np.float32), [], progress=False),
         error=ValueError, match="Cannot build an index of an empty corpus.*Check the corpus file"),
    # ------------------------------------------------------------ queries
    Case("query-empty-string", "query", "answer('')",
         _answer(""), error=ValueError, match="Every question must be a non-empty string"),
    Case("query-invisible-question", "query", "answer() of a question of zero-width characters and NUL",
         _answer(INVISIBLE), error=ValueError, match="Every question must be a non-empty string"),
    Case("query-not-a-string", "query", "answer([None])",
         _answer([None]), error=ValueError, match=r"Every question must be a non-empty string; got \[None\]"),
    Case("query-10000-words", "query", "answer() a 10,000-word question",
         _answer(LONG_QUESTION), recovery="question.*(truncat|keeps its first)",
         check=lambda answer: bool(answer["answer"])),
    Case("query-10000-words-context", "query", "pipeline(question=<10,000 words>, context=...)",
         _long_question_with_context, recovery=r"The question has \d+ tokens; reading a passage keeps its first",
         check=lambda answer: bool(answer["answer"])),
    Case("query-top-k-zero", "query", "answer(question, top_k=0)",
         _answer("who?", top_k=0), error=ValueError, match="top_k and batch_size must be >= 1, got 0"),
    Case("query-batch-size-negative", "query", "answer(question, batch_size=-1)",
         _answer("who?", batch_size=-1), error=ValueError, match="top_k and batch_size must be >= 1, got 1 and -1"),
    Case("query-search-k-zero", "query", "index.search(q, 0)",
         lambda tmp: _search(tmp, _embeddings(n=1), 0), error=ValueError, match="k must be a positive integer, got 0"),
    Case("query-search-k-negative", "query", "index.search(q, -3)",
         lambda tmp: _search(tmp, _embeddings(n=1), -3), error=ValueError,
         match="k must be a positive integer, got -3"),
    Case("query-search-k-over-rows", "query", "index.search(q, 100) on a 6-block index",
         lambda tmp: _search(tmp, _embeddings(n=1), 100), error=ValueError,
         match="k=100 exceeds the 6 blocks in the index; ask for at most 6"),
    Case("query-answer-k-over-rows", "query", "answer() with a 1-block index (reader_beam_size=2)",
         lambda tmp: (lambda model: lambda: model.answer("who was alan turing?"))(_openqa(rows=1)),
         check=lambda answer: answer["block_id"] == 0 and bool(answer["answer"])),
    Case("query-nan-embedding", "query", "index.search with a NaN query embedding",
         lambda tmp: _search(tmp, np.full((1, DIM), np.nan, np.float32), 1), error=ValueError,
         match=r"NaN or inf in rows \[0\]; check the model's inputs and dtype"),
    Case("query-one-dimensional", "query", "index.search(q, 1) with q of shape [16]",
         lambda tmp: _search(tmp, _embeddings(n=1)[0], 1), error=ValueError,
         match=r"must have shape \[batch, 16\], got \(16,\); for a single query pass q\[None\]"),
    Case("query-no-index", "query", "answer() on a model with no index attached",
         lambda tmp: (lambda model: (setattr(model, "index", None), lambda: model.answer("who?"))[1])(_openqa()),
         error=ValueError, match="no index to retrieve from: pass one with RealmForOpenQA.from_pretrained"),
]


# ---------------------------------------------------------------- the test


def _snapshot(root: Path) -> dict:
    """sha256 of every file under `root`, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_catalogue_covers_every_area():
    areas = {case.area for case in CATALOGUE}
    assert areas == {"corpus", "qa", "config", "checkpoint", "index", "query"}
    assert len(CATALOGUE) >= 30 and len({case.id for case in CATALOGUE}) == len(CATALOGUE)
    for case in CATALOGUE:
        assert (case.error is None) == (not case.match) and (case.error or case.recovery or case.check), case.id


@pytest.mark.parametrize("case", [_param(case) for case in CATALOGUE])
def test_bad_input(case, tmp_path, caplog):
    call = case.run(tmp_path)
    before = _snapshot(tmp_path)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.error is not None:
            with pytest.raises(case.error) as raised:
                call()
            message = str(raised.value)
            assert re.search(case.match, message, flags=re.S), \
                f"{case.id}: message does not match {case.match!r}:\n{message}"
        else:
            result = call()
    after = _snapshot(tmp_path)
    changed = {name for name in before if after.get(name) != before[name]}
    assert not changed, f"{case.id}: existing files changed or removed: {sorted(changed)}"
    if case.error is not None:
        assert set(after) == set(before), f"{case.id}: a failed call left files: {sorted(set(after) - set(before))}"
        return
    logged = caplog.text + "\n".join(str(w.message) for w in caught)
    if case.recovery:
        assert re.search(case.recovery, logged, flags=re.S), \
            f"{case.id}: nothing logged matches {case.recovery!r}:\n{logged[-2000:]}"
    if case.check is not None:
        assert case.check(result), f"{case.id}: unexpected result {result!r:.300}"
