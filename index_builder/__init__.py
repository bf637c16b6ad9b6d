"""Corpus -> blocks -> embeddings -> FAISS `BlockIndex` (DESIGN.md sections 3-5)."""

from .block_index import BlockIndex
from .build import build_index
from .encode import encode_blocks
from .manifest import IndexMismatchError
from .refresh import IndexRefresher
from .sharded import ShardedBlockIndex

__all__ = ["BlockIndex", "IndexMismatchError", "IndexRefresher", "ShardedBlockIndex", "build_index", "encode_blocks"]
