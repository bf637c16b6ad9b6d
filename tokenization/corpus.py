"""Load a corpus of documents (`doc_id`, `title`, `text`) from files, a saved `datasets` directory or the Hub.

Every record is checked as it is read, so a bad one is reported with its place: `path, line N` (1-based) for
jsonl and csv, `path, item N` for a JSON array and `name, row N` for parquet and `datasets` sources (both 0-based).
The checked corpus is written once to an Arrow file in the cache (keyed by a checksum of the file's bytes, or its
`datasets` fingerprint, and the options) and memory-mapped, so corpora larger than RAM load. A file rewritten in
place, even with the same size and modification time, is therefore read again.
"""

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tokenization.jsonl import jsonl_values
from tokenization.storage import atomic_file, atomic_write_text, file_checksum

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cached Arrow layout, the checks or the cache key change
WRITE_BATCH_SIZE = 10_000
MAX_REPORTED = 5  # bad records named in the skip-mode log line
FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                ".parquet": "parquet"}
SKIP_HINT = "Fix the record, or pass on_error='skip' (--on-error skip) to drop bad records with a logged count."


class CorpusError(ValueError):
    """A corpus that cannot be loaded: bad records, missing fields, duplicate doc ids, or no documents at all."""


@dataclass(frozen=True)
class _Fields:
    title: str | None
    text: str
    doc_id: str | None


@dataclass
class _Source:
    name: str  # what messages call the source
    fingerprint: str
    records: object  # callable(fields) -> iterator of (location, record dict or None, problem or None)
    columns: list | None = None  # known up front for tables; None for JSON


def load_corpus(source, title_field="title", text_field="text", doc_id_field="doc_id", split="train",
                on_error="raise", cache_dir=None):
    """Read, check and normalise a corpus to a `datasets.Dataset` with string columns `doc_id`, `title`, `text`.

    Args:
        source: a `.jsonl`/`.ndjson`, `.json` (lines or an array of objects), `.csv`, `.tsv` or `.parquet` file; a
            directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (or holding data files); a Hub
            dataset id (through `datasets.load_dataset`, which works offline from its cache); or a `Dataset`.
        title_field, text_field, doc_id_field (`str`): the source's names for the three fields. A title that is
            absent or null becomes "". Without a doc id field (or with `doc_id_field=None`) a document's id is its
            0-based record number in the source, as a string; integer ids become strings.
        split (`str`): the split to read from a `DatasetDict` or a Hub dataset.
        on_error (`str`): "raise" stops at the first bad record with a `CorpusError` naming its place; "skip"
            drops bad records (and, for duplicate doc ids, every record after the first) and logs how many.
        cache_dir (`str`, *optional*): where the checked Arrow file (and Hub downloads) go; default: the datasets
            cache.

    Returns:
        A memory-mapped `datasets.Dataset` with columns `doc_id`, `title`, `text`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    fields = _Fields(title_field, text_field, doc_id_field)
    opened = _open_source(source, split, cache_dir)
    if opened.columns is not None and text_field not in opened.columns:
        raise CorpusError(f"{opened.name}: no {text_field!r} field; the fields are {opened.columns}. Pass "
                          "text_field=<the field holding the document text> (--text-field).")
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, opened.fingerprint, fields.title, fields.text, fields.doc_id,
                                     on_error]).encode()).hexdigest()[:24]
    cache_root = Path(cache_dir) if cache_dir is not None else Path(_datasets().config.HF_DATASETS_CACHE)
    arrow_path = cache_root / "realm_corpus" / f"{key}.arrow"
    report_path = arrow_path.with_suffix(".json")
    if not (arrow_path.exists() and report_path.exists()):
        report = _write_checked(opened, fields, on_error, arrow_path)
        atomic_write_text(report_path, json.dumps(report))
    report = json.loads(report_path.read_text())
    _log_skipped(opened.name, report)
    return _datasets().Dataset.from_file(str(arrow_path))


def _datasets():
    try:
        import datasets
    except ImportError as error:
        raise ImportError("Loading a corpus needs the `datasets` package: pip install 'realm-hf[index]'.") from error
    return datasets


# ---------------------------------------------------------------- sources


def _open_source(source, split, cache_dir) -> _Source:
    datasets = _datasets()
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _dataset_source(_pick_split(source, split, "the given DatasetDict"), "the given Dataset")
    path = Path(source)
    if path.is_file():
        return _file_source(path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _dataset_source(_pick_split(datasets.load_from_disk(str(path)), split, str(path)), str(path))
        return _dataset_source(_load_dataset(str(path), split, cache_dir), str(path))
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"No corpus file or directory at {source}; check the path (formats: "
                                f"{', '.join(sorted(FILE_FORMATS))}, a save_to_disk directory, or a Hub dataset id).")
    return _dataset_source(_load_dataset(str(source), split, cache_dir), str(source))


def _looks_like_path(source: str) -> bool:
    return (Path(source).suffix.lower() in FILE_FORMATS or os.path.isabs(source) or source.startswith(".")
            or "\\" in source or source.count("/") > 1)


def _load_dataset(name: str, split: str, cache_dir):
    try:
        return _datasets().load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as error:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise CorpusError(
            f"{name!r} is not a local file or directory, and loading it with datasets.load_dataset(split={split!r}) "
            f"failed: {type(error).__name__}: {error}. Check the path or the Hub id and split; offline "
            "(HF_HUB_OFFLINE=1) a Hub dataset loads only from the cache of an earlier online run."
        ) from error


def _pick_split(dataset, split: str, name: str):
    if not isinstance(dataset, _datasets().DatasetDict):
        return dataset
    if split not in dataset:
        raise CorpusError(f"{name} has no split {split!r}; its splits are {list(dataset)}. Pass split=<name>.")
    return dataset[split]


def _dataset_source(dataset, name: str) -> _Source:
    def records(fields: _Fields):
        table = dataset.select_columns(_wanted(fields, dataset.column_names))
        for start in range(0, len(table), WRITE_BATCH_SIZE):
            batch = table[start:start + WRITE_BATCH_SIZE]
            for offset, values in enumerate(zip(*batch.values())):
                yield f"{name}, row {start + offset}", dict(zip(batch, values)), None

    return _Source(name, f"dataset:{dataset._fingerprint}", records, list(dataset.column_names))


def _wanted(fields: _Fields, columns: list) -> list:
    """The columns of a table that hold the corpus fields (others, like embeddings, are never read)."""
    return [name for name in columns if name in (fields.title, fields.text, fields.doc_id)]


def _file_source(path: Path) -> _Source:
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(f"{path}: unknown corpus format {path.suffix!r}; use one of {sorted(FILE_FORMATS)}, a "
                          "save_to_disk directory, or a Hub dataset id.")
    fingerprint = f"file:{path.stat().st_size}:{file_checksum(path)}"  # the content, not where or when it was written
    if kind == "parquet":
        return _parquet_source(path, fingerprint)
    if kind in ("csv", "tsv"):
        delimiter = "\t" if kind == "tsv" else ","
        columns = _csv_header(path, delimiter)
        return _Source(str(path), fingerprint, lambda fields: _csv_records(path, delimiter), columns)
    if kind == "json" and _first_char(path) == "[":
        return _Source(str(path), fingerprint, lambda fields: _json_array_records(path))
    return _Source(str(path), fingerprint, lambda fields: _jsonl_records(path))


def _first_char(path: Path) -> str:
    with open(path, "rb") as file:
        head = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("ascii", errors="replace")


def _jsonl_records(path: Path):
    for number, record, problem in jsonl_values(path):
        location = f"{path}, line {number}"
        if problem is not None:
            yield location, None, problem
        elif isinstance(record, dict):
            yield location, record, None
        else:
            yield location, None, f"expected a JSON object, got {type(record).__name__}"


def _json_array_records(path: Path):
    try:
        items = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not valid UTF-8 at byte {error.start}; re-encode the file as UTF-8.") from error
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}); fix the file, or write "
                          "one object per line (.jsonl) so that bad records can be skipped.") from error
    for number, item in enumerate(items):
        if isinstance(item, dict):
            yield f"{path}, item {number}", item, None
        else:
            yield f"{path}, item {number}", None, f"expected a JSON object, got {type(item).__name__}"


def _csv_header(path: Path, delimiter: str) -> list:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        header = next(csv.reader(file, delimiter=delimiter), None)
    if not header:
        raise CorpusError(f"{path} is empty: a csv corpus needs a header line naming its fields, then one document "
                          "per row.")
    return header


def _csv_records(path: Path, delimiter: str):
    previous_limit = csv.field_size_limit(2**31 - 1)  # documents are longer than csv's 128 KiB default
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
            reader = csv.reader(file, delimiter=delimiter)
            header = next(reader)
            line = reader.line_num
            while True:
                start = line + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    raise CorpusError(f"{path}, line {start}: unreadable csv ({error}); fix the file.") from error
                line = reader.line_num
                if not row:
                    continue
                location = f"{path}, line {start}"
                if len(row) != len(header):
                    yield location, None, f"{len(row)} fields, but the header has {len(header)}"
                else:
                    yield location, dict(zip(header, row)), None
    finally:
        csv.field_size_limit(previous_limit)


def _parquet_source(path: Path, fingerprint: str) -> _Source:
    import pyarrow.parquet as pq

    columns = list(pq.read_schema(path).names)

    def records(fields: _Fields):
        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=WRITE_BATCH_SIZE,
                                                       columns=_wanted(fields, columns)):
            for record in batch.to_pylist():
                yield f"{path}, row {number}", record, None
                number += 1

    return _Source(str(path), fingerprint, records, columns)


# ---------------------------------------------------------------- checks and writing


def _document(record: dict, number: int, fields: _Fields, numbered: bool):
    """`((doc_id, title, text), None)` for a good record, `(None, problem)` for a bad one."""
    text = record.get(fields.text)
    if fields.text not in record:
        return None, (f"no {fields.text!r} field (the record has {sorted(record)}); pass text_field=<the field "
                      "holding the document text> (--text-field)")
    if not isinstance(text, str):
        return None, f"{fields.text!r} is {_describe(text)}, expected a string"
    title = record.get(fields.title) if fields.title is not None else None
    if title is not None and not isinstance(title, str):
        return None, f"{fields.title!r} is {_describe(title)}, expected a string (or leave it out)"
    if numbered:
        doc_id = str(number)
    else:
        doc_id = record.get(fields.doc_id)
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            return None, (f"{fields.doc_id!r} is {_describe(doc_id)}, expected a string or an integer (or pass "
                          "doc_id_field=None to number the documents)")
        doc_id = str(doc_id)
    for name, value in (("text", text), ("title", title or ""), ("doc_id", doc_id)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None, f"the {name} holds bytes or characters that are not valid UTF-8; re-encode the file as UTF-8"
    return (doc_id, title or "", text), None


def _describe(value) -> str:
    return "missing (null)" if value is None else f"a {type(value).__name__} ({value!r:.40})"


def _write_checked(opened: _Source, fields: _Fields, on_error: str, arrow_path: Path) -> dict:
    """Check every record of `opened` and stream the good ones to `arrow_path`; returns the skip report."""
    import pyarrow as pa

    datasets = _datasets()
    schema = datasets.Features({name: datasets.Value("string") for name in ("doc_id", "title", "text")}).arrow_schema
    arrow_path.parent.mkdir(parents=True, exist_ok=True)
    state = {"records": 0, "documents": 0, "skipped": 0, "examples": [], "fields_seen": set(), "text_seen": False}
    with atomic_file(arrow_path) as temporary:
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for rows in _checked_batches(opened, fields, on_error, state):
                writer.write_batch(pa.RecordBatch.from_pydict(rows, schema=schema))
        if state["documents"] == 0:
            raise CorpusError(_empty_message(opened.name, fields, state))
    return {key: state[key] for key in ("records", "documents", "skipped", "examples")}


def _checked_batches(opened: _Source, fields: _Fields, on_error: str, state: dict):
    """Good records as column batches of at most WRITE_BATCH_SIZE rows; bad ones raise or are counted."""
    numbered = fields.doc_id is None or (opened.columns is not None and fields.doc_id not in opened.columns)
    decided = fields.doc_id is None or opened.columns is not None
    seen_ids, rows = set(), {"doc_id": [], "title": [], "text": []}
    for location, record, problem in opened.records(fields):
        number = state["records"]
        state["records"] += 1
        if record is not None:
            if not decided:  # JSON: the first object decides whether the corpus has doc ids
                numbered, decided = fields.doc_id not in record, True
            if len(state["fields_seen"]) < 100:
                state["fields_seen"].update(record)
            state["text_seen"] |= fields.text in record
            document, problem = _document(record, number, fields, numbered)
        if problem is None and document[0] in seen_ids:
            problem = (f"duplicate doc_id {document[0]!r} (an earlier record has it); doc ids must be unique, "
                       "on_error='skip' keeps the first")
        if problem is not None:
            if on_error == "raise":
                raise CorpusError(f"{location}: {problem}. {SKIP_HINT}")
            state["skipped"] += 1
            if len(state["examples"]) < MAX_REPORTED:
                state["examples"].append(f"{location}: {problem}")
            continue
        if not numbered:
            seen_ids.add(document[0])
        for name, value in zip(("doc_id", "title", "text"), document):
            rows[name].append(value)
        state["documents"] += 1
        if len(rows["text"]) >= WRITE_BATCH_SIZE:
            yield rows
            rows = {"doc_id": [], "title": [], "text": []}
    if rows["text"]:
        yield rows


def _empty_message(name: str, fields: _Fields, state: dict) -> str:
    if state["records"] == 0:
        return f"{name} holds no records; a corpus needs at least one document."
    message = f"{name}: none of its {state['records']} records is a usable document"
    if not state["text_seen"] and state["fields_seen"]:
        return (f"{message}: no record has a {fields.text!r} field; the fields are {sorted(state['fields_seen'])}. "
                "Pass text_field=<the field holding the document text> (--text-field).")
    return f"{message}; first problems: {'; '.join(state['examples'])}."


def _log_skipped(name: str, report: dict) -> None:
    if report["skipped"]:
        logger.warning("%s: skipped %d bad records of %d (kept %d documents). First: %s", name, report["skipped"],
                       report["records"], report["documents"], " | ".join(report["examples"]))
