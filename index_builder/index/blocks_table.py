"""The blocks of a BlockIndex as one Arrow file: block_id, doc_id, title, text, embeddings.

The file is an Arrow IPC stream, which `datasets.Dataset.from_file` memory-maps: texts and embeddings stay on
disk until rows are read, so serving a 13M-block index does not hold its texts in RAM.
"""

from bisect import bisect_right
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

TEXT_COLUMNS = ["block_id", "doc_id", "title", "text"]
WRITE_BATCH = 65536
DIGEST_BATCH = 65536  # blocks per Arrow batch when hashing every block's title and text


def block_schema(dimension: int) -> pa.Schema:
    return pa.schema([("block_id", pa.int64()), ("doc_id", pa.string()), ("title", pa.string()),
                      ("text", pa.string()), ("embeddings", pa.list_(pa.float32(), dimension))])


def record_batch(block_ids, doc_ids, titles, texts, embeddings: np.ndarray) -> pa.RecordBatch:
    """One batch of blocks; embeddings `[n, d]` float32."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])
    return pa.RecordBatch.from_arrays(
        [pa.array(np.asarray(block_ids, dtype=np.int64)), pa.array(doc_ids, type=pa.string()),
         pa.array(titles, type=pa.string()), pa.array(texts, type=pa.string()), vectors],
        schema=block_schema(embeddings.shape[1]))


def write_blocks(path: Path, dimension: int, batches) -> int:
    """Stream record batches into an Arrow file at `path`; returns the number of rows written."""
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, block_schema(dimension)) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def batches_of(dataset: datasets.Dataset, size: int = WRITE_BATCH):
    """The Arrow record batches of a dataset (respecting any row selection), in `size`-row pieces."""
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), size):
        yield from table[start:start + size].to_batches()


def open_blocks(path: Path) -> datasets.Dataset:
    return datasets.Dataset.from_file(str(path), in_memory=False)


class ArrowEmbeddings:
    """Zero-copy, read-only `[n, d]` view of an Arrow fixed-size-list float32 column, chunk by chunk.

    Supports `len`, `.shape`, slicing `[start:stop]` and sorted or unsorted integer-array indexing, returning numpy.
    """

    def __init__(self, column: pa.ChunkedArray):
        self.dimension = column.type.list_size
        self._chunks = [chunk for chunk in column.chunks if len(chunk)]
        self._starts = np.cumsum([0] + [len(chunk) for chunk in self._chunks]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def shape(self):
        return (len(self), self.dimension)

    def _chunk_array(self, i: int) -> np.ndarray:
        chunk = self._chunks[i]
        values = chunk.values.slice(chunk.offset * self.dimension, len(chunk) * self.dimension)
        # [rows_in_chunk, d], zero-copy from the memory-mapped file
        return values.to_numpy(zero_copy_only=True).reshape(len(chunk), self.dimension)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("ArrowEmbeddings supports contiguous slices only.")
            return self._slice(start, stop)
        return self._take(np.asarray(key, dtype=np.int64))

    def _slice(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        while start < stop:
            i = bisect_right(self._starts, start) - 1
            chunk_stop = min(stop, self._starts[i + 1])
            pieces.append(self._chunk_array(i)[start - self._starts[i]:chunk_stop - self._starts[i]])
            start = chunk_stop
        if not pieces:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        for i in np.unique(chunk_of):
            selected = chunk_of == i
            out[selected] = self._chunk_array(int(i))[rows[selected] - self._starts[i]]
        return out


def embeddings_of(dataset: datasets.Dataset) -> ArrowEmbeddings:
    """The embeddings column of a blocks dataset without copying it (no row selection may be active)."""
    return ArrowEmbeddings(dataset.data.column("embeddings"))


def blocks_digest(blocks) -> str:
    """xxh3-128 of every block's title and text, in order (the Arrow bytes of both columns, batch by batch): a
    resumed encoding is reused, and a lexical part served, only for exactly the same blocks."""
    digest = xxhash.xxh3_128()
    digest.update(str(len(blocks)).encode())
    for batch in blocks.select_columns(["title", "text"]).with_format("arrow").iter(batch_size=DIGEST_BATCH):
        for name in ("title", "text"):
            offsets, data = _string_bytes(batch[name])
            digest.update(offsets)
            digest.update(data)
    return digest.hexdigest()


def _string_bytes(column) -> tuple[bytes, memoryview]:
    """The offsets (from 0, int64) and the UTF-8 bytes of a string column, nulls read as empty strings."""
    array = pa.concat_arrays(column.chunks) if isinstance(column, pa.ChunkedArray) else column
    array = pc.fill_null(array.cast(pa.large_string()), "")
    # [len + 1]
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    data = array.buffers()[2]
    start, stop = int(offsets[0]), int(offsets[-1])
    return (offsets - start).tobytes(), memoryview(b"") if data is None else memoryview(data)[start:stop]
