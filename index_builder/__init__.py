"""Corpus -> blocks -> embeddings -> FAISS `BlockIndex` (see DESIGN.md sections 3-5).

The index stage builds on the models in `modeling_realm`; its classes are added by the index issue.
"""

__all__: list[str] = []
