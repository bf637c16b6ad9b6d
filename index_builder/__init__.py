"""Corpus -> blocks -> embeddings -> FAISS `BlockIndex` (DESIGN.md sections 3-5)."""

from .block_index import BlockIndex
from .manifest import IndexMismatchError

__all__ = ["BlockIndex", "IndexMismatchError"]
