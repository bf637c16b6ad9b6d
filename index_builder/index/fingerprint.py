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
    """The module that embeds blocks, as the model names it with `get_block_embedder()`: a `RealmEmbedder` is its
    own, `RealmScorer` and `RealmRetriever` return their block tower (`embedder`). Models are passed in; this package
    never imports their classes."""
    getter = getattr(model, "get_block_embedder", None)
    tower = getter() if getter is not None else None
    if tower is None:
        if getter is not None:  # e.g. RealmForOpenQA: a question tower and precomputed block embeddings
            raise ValueError(f"{type(model).__name__} holds only the question tower; its block embeddings are the "
                             "precomputed block_emb. Build its index with BlockIndex.from_realm_checkpoint(...).")
        raise TypeError(f"{type(model).__name__} has no REALM block embedder; pass a RealmEmbedder, RealmScorer or "
                        "RealmRetriever.")
    return tower


def has_block_embedder(model) -> bool:
    """Whether `model` has a block tower whose weights can be fingerprinted."""
    getter = getattr(model, "get_block_embedder", None)
    return getter is not None and getter() is not None
