"""The index itself: blocks as a memory-mapped Arrow table, a FAISS index over their embeddings, the manifest that
is checked before either is trusted, exact and approximate search, the weight fingerprint of the block tower that
embedded it, and the sharded form of an index too large for one process."""

from index_builder.index.block_index import BlockIndex
from index_builder.index.blocks_table import TEXT_COLUMNS
from index_builder.index.fingerprint import block_embedder_of, weights_fingerprint
from index_builder.index.manifest import IndexMismatchError, Manifest
from index_builder.index.sharded import ShardedBlockIndex

__all__ = ["TEXT_COLUMNS", "BlockIndex", "IndexMismatchError", "Manifest", "ShardedBlockIndex", "block_embedder_of",
           "weights_fingerprint"]
