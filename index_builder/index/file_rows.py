"""Reading single rows of a memory-mapped blocks file with `os.pread` instead of through the memory map.

Serving reads a few scattered rows per query (the texts of the top-k blocks, the embeddings of the candidates it
re-scores). Through the memory map every such read maps a 64 KB window of page cache into the process (the
kernel's fault-around), and mapped pages count in its resident set for as long as they stay cached: at 13.35M
blocks, 200 queries left 3 GB of the 25 GB file in the server's RSS next to 0.8 GB of its own memory
(benchmarks/README.md, section 2). `pread` copies just the bytes asked for; the kernel still caches the file, but
the cache is no longer charged to the process.

`FileRows.of(dataset, path)` finds where the dataset's Arrow buffers lie in the file (their addresses inside the
file's mappings in /proc/self/maps) and returns None when it cannot (not Linux, an in-memory or edited table), in
which case the caller reads through the memory map as before. Empty string buffers (a column of empty titles) and
null strings (read from the validity bitmap) are served from the file too, so a file truncated after loading is an
OSError, never a SIGBUS through the map.
"""

import logging
import os
import struct
from bisect import bisect_right
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

STRING_COLUMNS = ("doc_id", "title", "text")


class FileRows:
    """Row reads of a blocks table (`block_id`, strings, fixed-size float32 `embeddings`) by file offset."""

    def __init__(self, table: pa.Table, path: Path, mappings: list[tuple[int, int, int]]):
        self.path, self._mappings = Path(path), mappings  # (start address, end address, file offset), sorted
        self._mapping_starts = [start for start, _, _ in mappings]
        self._fd = os.open(self.path, os.O_RDONLY)
        embeddings = table.column("embeddings")
        self.dimension = embeddings.type.list_size
        lengths = [len(chunk) for chunk in embeddings.chunks]
        self._starts = np.cumsum([0] + lengths).tolist()
        # per chunk: file offset of row 0 of its embeddings; of its string offsets and data, per string column
        self._vectors = [self._vector_offset(chunk) for chunk in embeddings.chunks]
        self._strings = {name: [self._string_offsets(chunk) for chunk in table.column(name).chunks]
                         for name in STRING_COLUMNS}
        self._block_ids = [self._id_offset(chunk) for chunk in table.column("block_id").chunks]

    @classmethod
    def of(cls, dataset: datasets.Dataset, path) -> "FileRows | None":
        """A reader for `dataset` memory-mapped from `path`, or None if its buffers are not all in that file."""
        table = dataset.data.table
        if dataset._indices is not None or table.column("block_id").null_count:
            return None
        mappings = file_mappings(path)
        if not mappings:
            return None
        try:
            return cls(table, path, mappings)
        except LookupError as error:  # a buffer outside the file (e.g. rows added in memory): read through the map
            logger.debug("Reading %s through its memory map: %s", path, error)
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    # ------------------------------------------------------------------------------------------ reads
    def embeddings(self, rows: np.ndarray) -> np.ndarray:
        """Stored embeddings of table rows `[n]` -> `[n, dimension]` float32."""
        width = 4 * self.dimension
        out = bytearray(len(rows) * width)
        for i, (chunk, row) in enumerate(self._locate(rows)):
            out[i * width:(i + 1) * width] = self._read(self._vectors[chunk] + row * width, width)
        return np.frombuffer(out, dtype=np.float32).reshape(len(rows), self.dimension)

    def blocks(self, rows: np.ndarray) -> list[dict]:
        """The block_id, doc_id, title and text of table rows `[n]`, as dicts."""
        found = []
        for chunk, row in self._locate(rows):
            block = {"block_id": struct.unpack("<q", self._read(self._block_ids[chunk] + 8 * row, 8))[0]}
            for name in STRING_COLUMNS:
                block[name] = self._string(self._strings[name][chunk], row)
            found.append(block)
        return found

    def _string(self, where: tuple, row: int) -> str | None:
        """One string of a column chunk: None where the validity bitmap says null, "" from an empty data buffer."""
        validity, bit, offsets, data = where
        if validity is not None:
            position = bit + row
            if not self._read(validity + position // 8, 1)[0] >> (position % 8) & 1:
                return None
        start, end = struct.unpack("<ii", self._read(offsets + 4 * row, 8))
        if data is None:
            if end != start:
                raise OSError(f"{self.path}: a string of {end - start} bytes in an empty buffer; the file is damaged. "
                              "Load the index again (or rebuild it).")
            return ""
        return self._read(data + start, end - start).decode("utf-8")

    # ------------------------------------------------------------------------------------------ internals
    def _locate(self, rows: np.ndarray):
        for row in np.asarray(rows, dtype=np.int64).tolist():
            chunk = bisect_right(self._starts, row) - 1
            yield chunk, row - self._starts[chunk]

    def _read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.path} ended early: read {len(data)} of {size} bytes at offset {offset}; the file "
                          "changed or was truncated after the index was loaded. Load the index again.")
        return data

    def _file_offset(self, address: int) -> int:
        i = bisect_right(self._mapping_starts, address) - 1
        if i < 0 or address >= self._mappings[i][1]:
            raise LookupError(f"buffer at {address:#x} is not in a mapping of {self.path}")
        start, _, offset = self._mappings[i]
        return address - start + offset

    def _vector_offset(self, chunk: pa.FixedSizeListArray) -> int:
        values = chunk.values
        if values.type != pa.float32():
            raise LookupError(f"embeddings are {values.type}, not float32")
        first = values.offset + chunk.offset * self.dimension
        return self._file_offset(values.buffers()[1].address) + 4 * first

    def _id_offset(self, chunk: pa.Int64Array) -> int:
        return self._file_offset(chunk.buffers()[1].address) + 8 * chunk.offset

    def _string_offsets(self, chunk: pa.StringArray) -> tuple:
        """(validity bitmap offset or None, its first bit, offsets offset, data offset or None for no data)."""
        if chunk.type != pa.string():
            raise LookupError(f"a string column is {chunk.type}, not string")
        validity, offsets, data = chunk.buffers()
        bitmap = self._file_offset(validity.address) if validity is not None and chunk.null_count else None
        text = self._file_offset(data.address) if data is not None and data.size > 0 else None
        return bitmap, chunk.offset, self._file_offset(offsets.address) + 4 * chunk.offset, text


def file_mappings(path) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of this process's memory mappings of `path`, sorted; empty where /proc is absent."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    target = os.path.realpath(path)
    found = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(value, 16) for value in fields[0].split("-"))
            found.append((start, end, int(fields[2], 16)))
    return sorted(found)
