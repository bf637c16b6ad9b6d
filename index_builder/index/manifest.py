"""`manifest.json`: what a BlockIndex directory holds, and the checks made before it is trusted.

An index directory, a Hub repo and their manifests are untrusted input (SECURITY.md). A manifest is read only from a
regular file of at most `MAX_MANIFEST_BYTES`; its structure and every field's type are checked with one error that
lists what is wrong; it may name only the files its layout defines (`blocks.arrow` and `index.faiss` on disk;
`index.faiss` and `data/<name>.parquet` shards in the Hub layout; the four `bm25/` files of a lexical part, which must
describe the same blocks), all of them present; and each file must be a
regular file inside the directory (or, for a Hub snapshot, a link into its repo's blob store) before a byte of it is
read.
"""

import dataclasses
import json
import math
import os
import re
import stat
import time
from pathlib import Path

from index_builder.index.exact import PRECISIONS
from tokenization.storage import atomic_write_bytes, file_checksum

FORMAT_VERSION = 1
LEXICAL_FORMAT_VERSION = 2  # written by an index with a lexical part, which readers of version 1 cannot serve
READABLE_VERSIONS = (FORMAT_VERSION, LEXICAL_FORMAT_VERSION)
MANIFEST = "manifest.json"
BLOCKS_FILE = "blocks.arrow"
FAISS_FILE = "index.faiss"
LEXICAL_FILES = ["bm25/terms.arrow", "bm25/indptr.npy", "bm25/rows.npy", "bm25/weights.npy"]  # see lexical.py
HUB_LAYOUT = "hub-parquet"
HUB_SHARD = re.compile(r"^data/[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.parquet$")
MAX_MANIFEST_BYTES = 16 << 20  # a manifest of a 13M-block index in 10,000 shards is ~2 MB
CHECKSUM = re.compile(r"^[0-9a-f]{16}$")
DIGEST = re.compile(r"^[0-9a-f]{32}$")
DTYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class IndexMismatchError(ValueError):
    """A BlockIndex on disk disagrees with its manifest, or with the model that is to query it."""


@dataclasses.dataclass
class Manifest:
    num_blocks: int
    dimension: int
    factory: str
    metric: str = "inner_product"
    embedder_name: str | None = None
    embedder_fingerprint: str | None = None
    search_params: dict = dataclasses.field(default_factory=dict)
    contiguous_ids: bool = True
    created: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    files: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    layout: str | None = None  # HUB_LAYOUT for a Hub repo (parquet shards), None for a save_to_disk directory
    shards: list | None = None  # the parquet shards of the Hub layout, in row order
    lexical: dict | None = None  # the lexical part (lexical.LexicalIndex.record()), when the index has one
    blocks_digest: str | None = None  # xxh3-128 of the blocks' titles and texts (blocks_table.blocks_digest)
    encoding: dict | None = None  # a reduced-precision encoding and its agreement with float32 (encoding/agreement.py)

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["embedder"] = {"name": fields.pop("embedder_name"), "fingerprint": fields.pop("embedder_fingerprint")}
        fields["format_version"] = LEXICAL_FORMAT_VERSION if self.lexical is not None else FORMAT_VERSION
        for name in ("layout", "shards", "lexical", "blocks_digest", "encoding"):
            if fields[name] is None:
                del fields[name]
        return json.dumps(fields, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "manifest.json") -> "Manifest":
        """Parse and check a manifest: IndexMismatchError lists every field that is missing or wrong."""
        try:
            fields = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise IndexMismatchError(f"{source} is not valid JSON ({type(error).__name__}: {str(error)[:200]}); the "
                                     "index directory is damaged, rebuild or re-download it.") from error
        if not isinstance(fields, dict):
            raise IndexMismatchError(f"{source} holds a JSON {type(fields).__name__}, not an object; rebuild or "
                                     "re-download the index.")
        version = fields.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise IndexMismatchError(f"{source} has format_version {version!r}; this package reads versions "
                                     f"{list(READABLE_VERSIONS)}. Rebuild the index with this version of realm-hf.")
        problems = field_problems(fields)
        if problems:
            raise IndexMismatchError(f"{source} is not a valid BlockIndex manifest: " + "; ".join(problems[:10]) +
                                     ". Rebuild or re-download the index.")
        embedder = fields.pop("embedder", None) or {}
        known = {f.name for f in dataclasses.fields(cls)} - {"format_version"}
        return cls(**{k: v for k, v in fields.items() if k in known}, embedder_name=embedder.get("name"),
                   embedder_fingerprint=embedder.get("fingerprint"))

    def record_files(self, directory: Path, names):
        self.files = file_entries(directory, names)

    def write(self, directory: Path):
        atomic_write_bytes(directory / MANIFEST, self.to_json().encode())

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        """The manifest of `directory`, read from a regular file of bounded size and checked."""
        path = Path(directory) / MANIFEST
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{directory} has no {MANIFEST}: it is not a BlockIndex directory (or its save "
                                    "was interrupted). Build one with BlockIndex.save_to_disk or realm-build-index.")
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            raise IndexMismatchError(f"{path} is not a regular file of at most {MAX_MANIFEST_BYTES} bytes; the index "
                                     "directory is damaged or not a BlockIndex. Rebuild or re-download it.")
        return cls.from_json(path.read_text(encoding="utf-8", errors="replace"), source=str(path))

    def verify_files(self, directory: Path, checksums: bool = True, trusted_root: Path | None = None):
        """Raise IndexMismatchError naming the first file that is missing, not a regular file inside `directory`
        (or `trusted_root`, where a Hub snapshot's links point), truncated or altered."""
        for name, expected in self.files.items():
            path = listed_file(directory, name, trusted_root)
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise IndexMismatchError(f"{path} has {size} bytes but the manifest says {expected['bytes']}: the file "
                                         "was truncated or replaced. Rebuild or re-download the index.")
            if checksums and file_checksum(path) != expected["xxh3_64"]:
                raise IndexMismatchError(f"{path} does not match the checksum in the manifest: the file is corrupted. "
                                         "Rebuild or re-download the index.")


def file_entries(directory: Path, names) -> dict:
    """The manifest entries (size and xxh3-64) of files under `directory`."""
    return {name: {"bytes": (Path(directory) / name).stat().st_size, "xxh3_64": file_checksum(Path(directory) / name)}
            for name in names}


def listed_file(directory: Path, name: str, trusted_root: Path | None = None) -> Path:
    """`directory / name` once it is known to be a regular file that resolves inside `trusted_root` (default:
    `directory`); IndexMismatchError otherwise. `name` must already have passed `field_problems`."""
    path = Path(directory) / name
    if not os.path.lexists(path):
        raise IndexMismatchError(f"{path} is missing but listed in the manifest; the index is incomplete. Rebuild or "
                                 "re-download the index.")
    root = Path(trusted_root if trusted_root is not None else directory).resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise IndexMismatchError(f"{path} leads outside the index ({resolved}); an index only reads its own files. "
                                 "Rebuild or re-download the index.")
    if not stat.S_ISREG(os.stat(resolved).st_mode):
        raise IndexMismatchError(f"{path} is not a regular file; rebuild or re-download the index.")
    return path


def field_problems(fields: dict) -> list[str]:
    """What is wrong with the fields of a parsed manifest (empty when nothing is)."""
    problems = []
    for name, check, meaning in FIELD_CHECKS:
        if name not in fields:
            if name in REQUIRED_FIELDS:
                problems.append(f"no {name!r}")
        elif not check(fields[name]):
            problems.append(f"{name!r} is {_shown(fields[name])}, expected {meaning}")
    if not problems:
        problems += lexical_problems(fields) + encoding_problems(fields)
    if not problems:
        lexical = set(LEXICAL_FILES) if fields.get("lexical") is not None else set()
        problems += file_name_problems(fields["files"], fields.get("layout"), fields.get("shards"), lexical)
    return problems


def lexical_problems(fields: dict) -> list[str]:
    """A lexical part must describe these blocks: the same number, and the digest of their texts."""
    lexical = fields.get("lexical")
    if lexical is None:
        return []
    problems = [f"lexical[{name!r}] is {_shown(lexical.get(name))}, expected {meaning}"
                for name, check, meaning in LEXICAL_CHECKS if not check(lexical.get(name))]
    if problems:
        return problems
    if (fields.get("format_version") or 0) < LEXICAL_FORMAT_VERSION:
        problems.append(f"an index with a lexical part has format_version {LEXICAL_FORMAT_VERSION}")
    if lexical["num_blocks"] != fields["num_blocks"]:
        problems.append(f"the lexical part covers {lexical['num_blocks']} blocks, the index {fields['num_blocks']}")
    if lexical["blocks_digest"] != fields.get("blocks_digest"):
        problems.append("the lexical part was built over other blocks than the index holds (its blocks_digest "
                        f"{lexical['blocks_digest']!r} differs from the index's {fields.get('blocks_digest')!r})")
    return problems


def encoding_problems(fields: dict) -> list[str]:
    """The record of a reduced-precision encoding: a dtype, and its agreement with float32 on a sample of the blocks
    it was built with (the measures null when nothing was measured; `remove` may leave fewer blocks than that)."""
    encoding = fields.get("encoding")
    if encoding is None:
        return []
    return [f"encoding[{name!r}] is {_shown(encoding.get(name))}, expected {meaning}"
            for name, check, meaning in ENCODING_CHECKS if not check(encoding.get(name))]


def file_name_problems(files: dict, layout, shards, lexical: set = frozenset()) -> list[str]:
    """The files a manifest lists must be exactly those its layout defines (and its lexical part, if it has one),
    with well-formed sizes and checksums."""
    problems = [f"files[{name!r}] is {_shown(entry)}, expected {{'bytes': int >= 0, 'xxh3_64': 16 hex digits}}"
                for name, entry in files.items() if not _is_file_entry(entry)]
    missing = sorted(lexical - set(files))
    if missing:
        problems.append(f"the lexical part's files {missing} are not listed")
    files = {name: entry for name, entry in files.items() if name not in lexical}
    if layout is None:
        expected = {BLOCKS_FILE, FAISS_FILE}
        if set(files) != expected:
            problems.append(f"a BlockIndex directory lists exactly {sorted(expected)}, this one "
                            f"{_shown(sorted(files))}")
        if shards is not None:
            problems.append("'shards' belongs to the Hub layout only")
        return problems
    parquet = [name for name in files if name != FAISS_FILE]
    bad = [name for name in parquet if not HUB_SHARD.match(name)]
    if FAISS_FILE not in files:
        problems.append(f"the Hub layout lists {FAISS_FILE!r}, this one does not")
    if bad:
        problems.append(f"file names {_shown(bad)} are not shards data/<name>.parquet")
    if not parquet:
        problems.append("the Hub layout lists at least one parquet shard")
    if shards is not None and sorted(shards) != sorted(parquet):
        problems.append(f"'shards' {_shown(shards)} differ from the parquet files listed {_shown(sorted(parquet))}")
    return problems


def _is_file_entry(entry) -> bool:
    return (isinstance(entry, dict) and _is_count(entry.get("bytes")) and isinstance(entry.get("xxh3_64"), str)
            and CHECKSUM.match(entry["xxh3_64"]) is not None)


def _is_count(value, low: int = 0, high: int = 1 << 48) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_param(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_search_param(name, value) -> bool:
    if name == "precision":
        return value in PRECISIONS
    return isinstance(name, str) and _is_param(value)


def _is_embedder(value) -> bool:
    return value is None or (isinstance(value, dict) and all(
        value.get(key) is None or isinstance(value.get(key), str) for key in ("name", "fingerprint")))


def _is_measure(value, low: float) -> bool:
    return value is None or (_is_param(value) and low <= value <= 1)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


REQUIRED_FIELDS = ("num_blocks", "dimension", "factory", "files")
FIELD_CHECKS = [  # (field, check, what it must be)
    ("num_blocks", _is_count, "an integer >= 0"),
    ("dimension", lambda v: _is_count(v, 1, 1 << 16), "an integer in [1, 65536]"),
    ("factory", lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a FAISS factory string"),
    ("metric", lambda v: v == "inner_product", "'inner_product'"),
    ("embedder", _is_embedder, "an object with a string or null 'name' and 'fingerprint'"),
    ("search_params", lambda v: isinstance(v, dict) and all(_is_search_param(k, x) for k, x in v.items()),
     "an object of numbers (and a 'precision' name)"),
    ("contiguous_ids", lambda v: isinstance(v, bool), "true or false"),
    ("created", lambda v: isinstance(v, str) and len(v) <= 100, "a date string"),
    ("files", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "an object of files"),
    ("layout", lambda v: v == HUB_LAYOUT, repr(HUB_LAYOUT)),
    ("shards", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of file names"),
    ("lexical", lambda v: isinstance(v, dict), "an object describing the lexical part"),
    ("blocks_digest", lambda v: isinstance(v, str) and DIGEST.match(v) is not None, "32 hex digits"),
    ("encoding", lambda v: isinstance(v, dict), "an object describing a reduced-precision encoding"),
]
LEXICAL_CHECKS = [  # (field of the lexical part, check, what it must be); values are checked again when loaded
    ("method", lambda v: v == "bm25", "'bm25'"),
    ("k1", _is_param, "a number"),
    ("b", _is_param, "a number"),
    ("stopwords", lambda v: v is None or (isinstance(v, str) and len(v) <= 40), "null or a language name"),
    ("stemmer", lambda v: v is None or (isinstance(v, str) and len(v) <= 40), "null or a stemmer name"),
    ("lowercase", lambda v: isinstance(v, bool), "true or false"),
    ("num_blocks", _is_count, "an integer >= 0"),
    ("num_terms", lambda v: _is_count(v, 1), "an integer >= 1"),
    ("num_postings", lambda v: _is_count(v, 1), "an integer >= 1"),
    ("blocks_digest", lambda v: isinstance(v, str) and DIGEST.match(v) is not None, "32 hex digits"),
]
ENCODING_CHECKS = [  # (field of the encoding record, check, what it must be)
    ("dtype", lambda v: isinstance(v, str) and DTYPE_NAME.match(v) is not None, "a dtype name such as 'bfloat16'"),
    ("autocast", lambda v: isinstance(v, bool), "true or false"),
    ("sample_blocks", _is_count, "an integer >= 0"),
    ("cosine_mean", lambda v: _is_measure(v, -1), "null or a number in [-1, 1]"),
    ("cosine_min", lambda v: _is_measure(v, -1), "null or a number in [-1, 1]"),
    ("top5_agreement", lambda v: _is_measure(v, 0), "null or a number in [0, 1]"),
]
