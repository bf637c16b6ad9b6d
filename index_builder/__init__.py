"""Blocks -> embeddings -> a searchable, shareable `BlockIndex` (ARCHITECTURE.md at the repository root).

`index/` holds the index and its files, `encoding/` turns blocks into embeddings and builds an index directory,
`hub/` shares an index on the Hub, `google_checkpoint.py` reads google's open-QA checkpoints into an index, and
`storage.py` writes every file crash-safely. Models are passed in; nothing here imports `modeling_realm`.
"""

from index_builder.encoding import build_index, encode_blocks, with_block_ids
from index_builder.index import (
    TEXT_COLUMNS,
    BlockIndex,
    IndexMismatchError,
    Manifest,
    ShardedBlockIndex,
    weights_fingerprint,
)
from tokenization.storage import atomic_directory, atomic_write_bytes, atomic_write_text, replace_directory

__all__ = [
    "TEXT_COLUMNS",
    "BlockIndex",
    "IndexMismatchError",
    "Manifest",
    "ShardedBlockIndex",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_index",
    "encode_blocks",
    "replace_directory",
    "weights_fingerprint",
    "with_block_ids",
]
