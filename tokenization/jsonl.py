"""Reading JSON Lines files line by line, with bad lines reported instead of raised (corpora and QA files)."""

import json
from collections.abc import Iterator
from pathlib import Path


def jsonl_values(path: Path) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed value or None, problem or None) for every non-blank line of `path`: bytes that are not
    UTF-8 and invalid JSON are problems naming the byte or column; a byte-order mark is ignored."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8").lstrip("\ufeff").strip()
            except UnicodeDecodeError as error:
                yield number, None, (f"not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                                     "re-encode the file as UTF-8")
                continue
            if not line:
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as error:
                yield number, None, f"invalid JSON ({error.msg} at column {error.colno})"
