"""Blocks -> embeddings (resumable, sharded across processes) -> a BlockIndex directory."""

from index_builder.encoding.build import build_index, with_block_ids
from index_builder.encoding.encode import encode_blocks

__all__ = ["build_index", "encode_blocks", "with_block_ids"]
