"""Sharing a BlockIndex as a Hugging Face Hub dataset repo: parquet shards, `index.faiss`, manifest and card.
`BlockIndex.push_to_hub` and `BlockIndex.from_pretrained` are the public entry points."""
