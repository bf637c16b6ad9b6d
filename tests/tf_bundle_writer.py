"""A minimal TensorFlow V2 checkpoint writer for tests (one data block, one shard, no restarts beyond the first).

The committed fixtures under tests/fixtures/tf_checkpoints are written by TensorFlow itself; this writer only makes
variations of them (a variable left out, a shape changed) in the package's environment, which has no TensorFlow.
"""

from pathlib import Path

import numpy as np

from modeling_realm.models.crc32c import crc32c, masked
from modeling_realm.models.tf_bundle import TABLE_MAGIC

DTYPE_ENUM = {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.int64): 9, np.dtype(np.float16): 19}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _entry(array: np.ndarray, offset: int, data: bytes) -> bytes:
    shape = b"".join(_field(2, 2, _varint(len(dim)) + dim) for dim in (_field(1, 0, _varint(d)) for d in array.shape))
    return (_field(1, 0, _varint(DTYPE_ENUM[array.dtype])) + _field(2, 2, _varint(len(shape)) + shape)
            + _field(4, 0, _varint(offset)) + _field(5, 0, _varint(len(data)))
            + _field(6, 5, masked(crc32c(data)).to_bytes(4, "little")))


def _block(items) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in items)
    return body + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point, at 0


def _with_trailer(block: bytes) -> bytes:
    return block + b"\0" + masked(crc32c(block + b"\0")).to_bytes(4, "little")


def write_checkpoint(prefix, variables: dict[str, np.ndarray]) -> Path:
    """Write `variables` as the checkpoint `prefix` (`prefix.index` + one data shard); returns the prefix."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data, items = bytearray(), [(b"", _field(1, 0, _varint(1)))]  # BundleHeaderProto: num_shards=1
    for name in sorted(variables):
        raw = np.ascontiguousarray(variables[name]).tobytes()
        items.append((name.encode(), _entry(np.asarray(variables[name]), len(data), raw)))
        data += raw
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))
    data_block = _with_trailer(_block(items))
    handle = _varint(0) + _varint(len(data_block) - 5)
    index_block = _with_trailer(_block([(items[-1][0] + b"\xff", handle)]))
    meta_block = _with_trailer(_block([]))
    meta_offset, index_offset = len(data_block), len(data_block) + len(meta_block)
    footer = (_varint(meta_offset) + _varint(len(meta_block) - 5) + _varint(index_offset)
              + _varint(len(index_block) - 5))
    footer = footer.ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    prefix.with_name(prefix.name + ".index").write_bytes(data_block + meta_block + index_block + footer)
    return prefix
