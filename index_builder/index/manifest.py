"""`manifest.json`: what a BlockIndex directory holds, and the checks made before it is trusted."""

import dataclasses
import json
import time
from pathlib import Path

from tokenization.storage import atomic_write_bytes, file_checksum

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BLOCKS_FILE = "blocks.arrow"
FAISS_FILE = "index.faiss"


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

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["embedder"] = {"name": fields.pop("embedder_name"), "fingerprint": fields.pop("embedder_fingerprint")}
        return json.dumps(fields, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "manifest.json") -> "Manifest":
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise IndexMismatchError(f"{source} is not valid JSON ({error}); the index directory is damaged, "
                                     "rebuild or re-download it.") from error
        version = fields.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexMismatchError(f"{source} has format_version {version!r}; this package reads version "
                                     f"{FORMAT_VERSION}. Rebuild the index with this version of realm-hf.")
        embedder = fields.pop("embedder", None) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in fields.items() if k in known}, embedder_name=embedder.get("name"),
                       embedder_fingerprint=embedder.get("fingerprint"))
        except TypeError as error:
            raise IndexMismatchError(f"{source} lacks a required field ({error}); rebuild the index.") from error

    def record_files(self, directory: Path, names):
        self.files = {name: {"bytes": (directory / name).stat().st_size, "xxh3_64": file_checksum(directory / name)}
                      for name in names}

    def write(self, directory: Path):
        atomic_write_bytes(directory / MANIFEST, self.to_json().encode())

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = directory / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{directory} has no {MANIFEST}: it is not a BlockIndex directory (or its save "
                                    "was interrupted). Build one with BlockIndex.save_to_disk or realm-build-index.")
        return cls.from_json(path.read_text(), source=str(path))

    def verify_files(self, directory: Path, checksums: bool = True):
        """Raise IndexMismatchError naming the first file that is missing, truncated or altered."""
        for name, expected in self.files.items():
            path = directory / name
            if not path.exists():
                raise IndexMismatchError(f"{path} is missing but listed in the manifest; the index is incomplete. "
                                         "Rebuild or re-download the index.")
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise IndexMismatchError(f"{path} has {size} bytes but the manifest says {expected['bytes']}: the file "
                                         "was truncated or replaced. Rebuild or re-download the index.")
            if checksums and file_checksum(path) != expected["xxh3_64"]:
                raise IndexMismatchError(f"{path} does not match the checksum in the manifest: the file is corrupted. "
                                         "Rebuild or re-download the index.")
