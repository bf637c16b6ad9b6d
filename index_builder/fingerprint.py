"""Weight fingerprints: tell whether an index was built with the block embedder that now queries it."""

import hashlib

import torch


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict (stable across save/reload)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def block_embedder_of(model):
    """The module that embeds blocks: a RealmEmbedder itself, or the block tower (`embedder`) of a two-tower model."""
    from modeling_realm import RealmEmbedder, RealmForOpenQA

    if isinstance(model, RealmEmbedder):
        return model
    if isinstance(model, RealmForOpenQA):
        raise ValueError("RealmForOpenQA holds only the question tower; its block embeddings are the precomputed "
                         "block_emb. Build its index with BlockIndex.from_realm_checkpoint(...).")
    embedder = getattr(model, "embedder", None)
    if not isinstance(embedder, RealmEmbedder):
        raise TypeError(f"{type(model).__name__} has no REALM block embedder; pass a RealmEmbedder, RealmScorer or "
                        "RealmRetriever.")
    return embedder
