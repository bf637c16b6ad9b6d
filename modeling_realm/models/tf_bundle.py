"""Read TensorFlow checkpoints (the V2 "tensor bundle" that `tf.train.Saver` writes) without TensorFlow.

A checkpoint `<prefix>` is `<prefix>.index` plus data shards `<prefix>.data-NNNNN-of-MMMMM`. The index is a LevelDB
table (data blocks of prefix-compressed keys, an index block, a 48-byte footer) mapping each variable name to a
`BundleEntryProto` (dtype, shape, shard, offset, size, CRC-32C); the empty key holds a `BundleHeaderProto`
(number of shards, endianness). Tensor bytes are stored raw, little-endian, in row-major order.

Everything is checked before it is used: the footer's magic number, every block's checksum, the protobuf fields, and
that each tensor's byte count equals its shape times its dtype's size and lies inside its shard. Tensor bytes are
then checked against their stored CRC-32C as they are read (`verify=False` skips that).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modeling_realm.models.crc32c import crc32c, masked

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + masked CRC-32C (4 bytes)
MAX_INDEX_BYTES = 1 << 28  # 256 MiB; google's BERT-large index is ~40 KB
# TensorFlow's DataType enum -> numpy dtype (the numeric types REALM/ORQA checkpoints hold).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_STRING, DT_BFLOAT16 = 7, 14


class CheckpointFormatError(ValueError):
    """The file is not a readable TensorFlow V2 checkpoint."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one variable's bytes are: shard `shard`, bytes [offset, offset + size)."""

    name: str
    dtype: int  # TensorFlow's DataType enum
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CheckpointFormatError("a varint runs past its record")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return result, pos


def _proto_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: ints for varint/fixed fields, bytes for the rest."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(data[pos: pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos: pos + length], pos + length
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise CheckpointFormatError("a protobuf field runs past its record")
        fields.append((number, value))
    return fields


def _shape(data: bytes) -> tuple[int, ...]:
    """TensorShapeProto -> dims (field 2: Dim, whose field 1 is the size)."""
    dims = []
    for number, value in _proto_fields(data):
        if number == 3 and value:
            raise CheckpointFormatError("a tensor of unknown rank")
        if number == 2:
            size = next((v for n, v in _proto_fields(value) if n == 1), 0)
            dims.append(size if size < 1 << 63 else size - (1 << 64))  # int64
    if any(d < 0 for d in dims):
        raise CheckpointFormatError(f"a tensor of negative dimension {dims}")
    return tuple(dims)


def _entry(name: str, data: bytes) -> TensorEntry:
    values = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    for number, value in _proto_fields(data):
        key = {1: "dtype", 2: "shape", 3: "shard", 4: "offset", 5: "size", 6: "crc32c", 7: "sliced"}.get(number)
        if key == "shape":
            value = _shape(value)
        elif key == "sliced":
            value = True
        if key is not None:
            values[key] = value
    return TensorEntry(name=name, **values)


def _block(index: bytes, offset: int, size: int) -> bytes:
    """The contents of a table block, its trailer checked."""
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(index):
        raise CheckpointFormatError("a block runs past the end of the index file")
    compression = index[end]
    stored = int.from_bytes(index[end + 1: end + 5], "little")
    if masked(crc32c(index[offset: end + 1])) != stored:
        raise CheckpointFormatError("a block of the index file fails its checksum")
    if compression != 0:
        raise CheckpointFormatError(f"compressed index blocks (type {compression}) are not supported; TensorFlow "
                                    "writes checkpoints uncompressed")
    return index[offset:end]


def _block_items(block: bytes):
    """(key, value) pairs of a block: each entry is shared/unshared key lengths, value length, key tail, value."""
    if len(block) < 4:
        raise CheckpointFormatError("a block is too short")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 * (restarts + 1)
    if limit < 0:
        raise CheckpointFormatError("a block's restart array is larger than the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > limit:
            raise CheckpointFormatError("a block entry runs past its block")
        key = key[:shared] + block[pos: pos + unshared]
        pos += unshared
        yield key, block[pos: pos + length]
        pos += length


def read_index(path: Path) -> tuple[dict, dict[str, TensorEntry]]:
    """The header fields and the entry of every variable of the checkpoint index `path`."""
    size = path.stat().st_size
    if not FOOTER_BYTES <= size <= MAX_INDEX_BYTES:
        raise CheckpointFormatError(f"{path} has {size} bytes; a checkpoint index has {FOOTER_BYTES} to "
                                    f"{MAX_INDEX_BYTES} bytes")
    index = path.read_bytes()
    footer = index[-FOOTER_BYTES:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise CheckpointFormatError(f"{path} is not a TensorFlow checkpoint index (wrong magic number)")
    _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    header, entries = {}, {}
    for _, handle in _block_items(_block(index, index_offset, index_size)):
        block_offset, pos = _varint(handle, 0)
        block_size, _ = _varint(handle, pos)
        for key, value in _block_items(_block(index, block_offset, block_size)):
            if key == b"":
                header = dict(_proto_fields(value))
            else:
                name = key.decode("utf-8", errors="replace")
                entries[name] = _entry(name, value)
    return header, entries


def dtype_of(entry: TensorEntry) -> np.dtype | None:
    """The numpy dtype an entry's bytes are read as (bfloat16 is read as uint16; None for strings)."""
    if entry.dtype == DT_BFLOAT16:
        return np.dtype(np.uint16)
    dtype = DTYPES.get(entry.dtype)
    return np.dtype(dtype).newbyteorder("<") if dtype is not None else None


def shard_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.parent / f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}"


class TFCheckpoint:
    """The variables of one TensorFlow checkpoint `prefix` (`prefix.index` + shards), checked on opening."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        header, self.entries = read_index(self.prefix.parent / (self.prefix.name + ".index"))
        self.num_shards = header.get(1, 1)
        if header.get(2, 0) != 0:
            raise CheckpointFormatError(f"{self.prefix} was written big-endian; only little-endian checkpoints "
                                        "(every x86/ARM/TPU host) are supported")
        self._check_entries()

    def _check_entries(self) -> None:
        sizes = {}
        for entry in self.entries.values():
            dtype = dtype_of(entry)
            if entry.sliced or dtype is None:
                continue  # refused when read (partitioned variables, strings): never needed by REALM's weights
            if not 0 <= entry.shard < self.num_shards:
                raise CheckpointFormatError(f"{entry.name} names shard {entry.shard} of {self.num_shards}")
            expected = math.prod(entry.shape) * dtype.itemsize  # Python ints: a crafted shape cannot overflow
            if entry.size != expected:
                raise CheckpointFormatError(f"{entry.name} has {entry.size} bytes, but shape {list(entry.shape)} "
                                            f"of {dtype} needs {expected}")
            if entry.shard not in sizes:
                path = shard_path(self.prefix, entry.shard, self.num_shards)
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing: a checkpoint's index and all its data shards must "
                                            "be copied together.")
                sizes[entry.shard] = path.stat().st_size
            if entry.offset + entry.size > sizes[entry.shard]:
                raise CheckpointFormatError(f"{entry.name} lies past the end of its data shard (bytes "
                                            f"{entry.offset}-{entry.offset + entry.size} of {sizes[entry.shard]}): "
                                            "the shard is truncated")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self.entries.items()}

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """The array of variable `name` (float32 for bfloat16 variables), its checksum checked unless verify=False."""
        entry = self.entries[name]
        dtype = dtype_of(entry)
        if entry.sliced or dtype is None:
            kind = "a partitioned variable" if entry.sliced else f"of TensorFlow dtype {entry.dtype}"
            raise CheckpointFormatError(f"{name} is {kind}, which this reader does not load")
        data = bytearray(entry.size)  # writable, so that torch can share it without a copy
        with open(shard_path(self.prefix, entry.shard, self.num_shards), "rb") as handle:
            handle.seek(entry.offset)
            count = handle.readinto(data)
        if count != entry.size:
            raise CheckpointFormatError(f"{name}: its data shard ended early (truncated while reading)")
        if verify and entry.crc32c is not None and masked(crc32c(data)) != entry.crc32c:
            raise CheckpointFormatError(f"{name} fails its CRC-32C checksum: the data shard is corrupted; copy the "
                                        "checkpoint again")
        array = np.frombuffer(data, dtype=dtype).reshape(entry.shape)
        if entry.dtype == DT_BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array
