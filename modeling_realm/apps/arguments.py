"""argparse types and checks of the console scripts: every argument is checked before a corpus or model is read."""

import argparse
import os
from pathlib import Path

import torch

from index_builder.encoding.precision import resolve_precision
from index_builder.index.exact import PRECISIONS
from index_builder.index.faiss_utils import PRECISION, RERANK, SEARCH_PARAMS


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def search_param(text: str) -> tuple[str, int | float | str]:
    """An argparse type: NAME=VALUE for a FAISS search parameter (or rerank), VALUE a number; or precision=NAME."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. nprobe=32), got {text!r}")
    if name not in SEARCH_PARAMS + (RERANK, PRECISION):
        raise argparse.ArgumentTypeError(f"unknown search parameter {name!r}; known: {', '.join(SEARCH_PARAMS)}, "
                                         f"{RERANK}, {PRECISION}")
    if name == PRECISION:
        if value not in PRECISIONS:
            raise argparse.ArgumentTypeError(f"precision={value!r}: expected one of {', '.join(PRECISIONS)}")
        return name, value
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}={value!r}: the value must be a number, e.g. {name}=32") from None
    if name in ("nprobe", "efSearch", RERANK):
        if not number.is_integer() or number < (0 if name == RERANK else 1):
            raise argparse.ArgumentTypeError(f"{name}={value!r}: expected a whole number >= "
                                             f"{0 if name == RERANK else 1}")
        return name, int(number)
    return name, number


def check_output(output: str, overwrite: bool) -> None:
    """Refuse, before any work, an --output that could not be written at the end: an existing path without
    --overwrite, a path that exists but is not a BlockIndex (or an empty directory), or one under a folder that is
    not writable (FileExistsError / PermissionError naming the fix)."""
    path = Path(output)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace it, or choose "
                                  "another output directory.")
        if not path.is_dir() or (any(path.iterdir()) and not (path / "manifest.json").is_file()):
            raise FileExistsError(f"--output {output} exists and is not a BlockIndex; refusing to replace it. Choose "
                                  "another path.")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--output {output}: cannot create it under {parent} (not a writable directory); "
                              "choose another path.")


def precision_problem(dtype: str, mixed_precision: str, cpu: bool) -> str | None:
    """What is wrong with --dtype and --mixed-precision on the device the encoding will run on (a GPU when one is
    present and --cpu is not given), or None."""
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    try:
        resolve_precision(dtype, mixed_precision, device)
    except ValueError as error:
        return f"--dtype {dtype} / --mixed-precision {mixed_precision}: {error}"
    return None
