"""Sharing REALM models: `save_pretrained`/`push_to_hub` write a model card and the model's code (so a checkpoint
loads with `trust_remote_code=True` where this package is not installed)."""

from modeling_realm.hub.sharing import push_model, save_for_sharing

__all__ = ["push_model", "save_for_sharing"]
