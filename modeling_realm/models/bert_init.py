"""Initialise REALM models from a plain BERT checkpoint (e.g. bert-base-uncased or MiniLM).

REALM's towers are BERT encoders, so pretraining, ICT and small experiments start by copying a BERT's weights into
every tower (`realm.*` of each embedder, encoder and reader). The REALM heads start from what keeps the BERT's
knowledge where possible (docs/models.md, "Starting from a BERT"):

- the retriever's pooling follows a sentence-transformers checkpoint's `1_Pooling/config.json` (mean pooling for
  all-MiniLM-L6-v2), else `[CLS]` as google's checkpoints;
- the retrieval projection is random (REALM's), the identity, or the principal components of a corpus sample
  (`projection_init.py`);
- the knowledge-augmented encoder takes the checkpoint's MLM head, or else one tied to its word embeddings
  (`mlm_head_init.py`).
"""

import json
import logging

from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel
from transformers.utils import cached_file

from modeling_realm.models.configuration import RealmConfig
from modeling_realm.models.encoder import RealmKnowledgeAugEncoder
from modeling_realm.models.mlm_head_init import load_or_tie_mlm_head
from modeling_realm.models.projection_init import (
    DEFAULT_PCA_SAMPLE,
    DEFAULT_SCORE_SCALE,
    embedders_of,
    init_projection_from_corpus,
    init_projection_identity,
    set_score_scale,
)

logger = logging.getLogger(__name__)

SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                 "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")
PROJECTIONS = ("random", "identity", "pca")
# sentence-transformers' pooling modes -> RealmConfig.retriever_pooling (other modes have no REALM equivalent)
SENTENCE_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def realm_config_from_bert(bert_config: BertConfig, **overrides) -> RealmConfig:
    """A `RealmConfig` whose backbone fields copy `bert_config`; `overrides` set any other field."""
    fields = {name: getattr(bert_config, name) for name in SHARED_FIELDS
              if getattr(bert_config, name, None) is not None}
    fields.update(overrides)
    return RealmConfig(**fields)


def init_from_bert(model_class, bert_name_or_path, projection: str = "random", blocks=None, tokenizer=None,
                   pca_sample_size: int = DEFAULT_PCA_SAMPLE, score_scale: float | None = DEFAULT_SCORE_SCALE,
                   **config_overrides):
    """Build `model_class` (any REALM model) with every BERT tower copied from `bert_name_or_path`.

    Args:
        model_class: e.g. `RealmRetriever`, `RealmKnowledgeAugEncoder`, `RealmForOpenQA`.
        bert_name_or_path: a directory or Hub id of a `BertModel` checkpoint.
        projection: the retrieval projection's start: "random" (REALM's), "identity" (`retriever_proj_size` = the
            BERT's hidden size, its default then) or "pca" (the top principal directions of the block
            tower's pooled embeddings of a sample of `blocks`, with `tokenizer`; default the BERT's tokenizer).
        blocks: the corpus sample for "pca": texts, or `split_into_blocks` output; at most `pca_sample_size` used.
        score_scale: retrieval scores start as this multiple of a cosine (`projection_init.set_score_scale`); None
            keeps REALM's LayerNorm weight of 1 (scores up to +-retriever_proj_size, near-hard softmaxes).
        **config_overrides: REALM fields such as `retriever_proj_size=128`, `separate_query_embedder=True` or
            `retriever_pooling="mean"` (default: the checkpoint's sentence-transformers pooling, else "cls").
    Returns:
        the model; random heads are freshly initialised (set a torch seed first for reproducibility). Starting points
        known to be poor are logged as warnings.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection={projection!r} is not one of {PROJECTIONS}.")
    sentence_pooling = sentence_transformers_pooling(bert_name_or_path)
    config_overrides.setdefault("retriever_pooling", sentence_pooling or "cls")
    has_encoder = issubclass(model_class, RealmKnowledgeAugEncoder)
    bert, mlm_head = _load_bert(bert_name_or_path, has_encoder)
    if projection == "identity":
        config_overrides.setdefault("retriever_proj_size", bert.config.hidden_size)
    model = model_class(realm_config_from_bert(bert.config, **config_overrides))
    _copy_towers(model, bert.state_dict(), bert_name_or_path)
    if has_encoder:
        load_or_tie_mlm_head(model, mlm_head, bert_name_or_path)
    if projection != "random" and not _embedders(model):
        raise ValueError(f"projection={projection!r} initialises a retrieval projection, which "
                         f"{model_class.__name__} does not have; leave projection at 'random'.")
    if _embedders(model):
        _init_projection(model, projection, blocks, tokenizer, bert_name_or_path, pca_sample_size)
        if score_scale is not None:
            set_score_scale(model, score_scale)
        _warn_poor_retriever(model.config, projection, sentence_pooling, bert_name_or_path)
    return model


def sentence_transformers_pooling(bert_name_or_path) -> str | None:
    """"mean" or "cls" when `bert_name_or_path` is a sentence-transformers model whose `1_Pooling/config.json` says
    so (read from the directory or the local Hub cache, never downloaded), else None."""
    path = cached_file(str(bert_name_or_path), "1_Pooling/config.json", local_files_only=True,
                       _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        modes = json.load(handle)
    chosen = [pooling for key, pooling in SENTENCE_POOLINGS.items() if modes.get(key)]
    if len(chosen) != 1:
        logger.warning("%s pools with %s, which REALM has no equivalent for; using 'cls' unless "
                       "retriever_pooling is set.", bert_name_or_path,
                       sorted(key for key, on in modes.items() if on is True))
        return None
    return chosen[0]


def _load_bert(bert_name_or_path, with_mlm_head: bool):
    """(BertModel with its pooler, the checkpoint's MLM head `BertOnlyMLMHead` or None when it has none)."""
    bert = BertModel.from_pretrained(bert_name_or_path)
    if not with_mlm_head:
        return bert, None
    mlm, info = BertForMaskedLM.from_pretrained(bert_name_or_path, output_loading_info=True)
    has_head = not any(key.startswith("cls.predictions.transform.") for key in info["missing_keys"])
    return bert, (mlm.cls if has_head else None)


def _copy_towers(model, state: dict, source) -> None:
    towers = [name for name, module in model.named_modules() if isinstance(module, BertModel)]
    for name in towers:
        missing, unexpected = model.get_submodule(name).load_state_dict(state, strict=False)
        if unexpected or missing:
            logger.info("Tower %s from %s: missing %s, unexpected %s", name, source, missing, unexpected)
    logger.info("Initialised %d BERT tower(s) of %s from %s", len(towers), type(model).__name__, source)


def _embedders(model):
    try:
        return embedders_of(model)
    except ValueError:
        return []


def _init_projection(model, projection: str, blocks, tokenizer, source, sample_size: int) -> None:
    if projection == "identity":
        init_projection_identity(model)
    elif projection == "pca":
        if blocks is None:
            raise ValueError("projection='pca' needs blocks=: a sample of the corpus (texts, or split_into_blocks "
                             "output) whose principal directions become the projection.")
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
        share = init_projection_from_corpus(model, tokenizer, blocks, sample_size=sample_size)
        logger.info("Projection from the top %d principal directions of the blocks (%.1f%% of their variance)",
                    len(share), 100 * share.sum().item())


def _warn_poor_retriever(config, projection: str, sentence_pooling: str | None, source) -> None:
    """Warnings for retriever starts measured to lose what the BERT knows (benchmarks/README.md section 8)."""
    if sentence_pooling is not None and config.retriever_pooling != sentence_pooling:
        logger.warning("%s was trained with %s pooling but the retriever pools with %r: its embeddings lose much of "
                       "what the model learnt (SQuAD gold recall@5, all-MiniLM-L6-v2 with a random 128-d projection: "
                       "61.0 with [CLS], 76.0 mean-pooled); leave retriever_pooling unset to follow the checkpoint.",
                       source,
                       sentence_pooling, config.retriever_pooling)
    if sentence_pooling is not None and projection == "random":
        logger.warning("%s is a sentence encoder and the retriever's %d-d projection is random: a random "
                       "projection scrambles its embedding space (SQuAD gold recall@5, all-MiniLM-L6-v2 mean-pooled: "
                       "76.0, against 82.7 through the principal components and 86.5 at full width); pass "
                       "projection='pca' with blocks=, or projection='identity' with retriever_proj_size=%d.", source,
                       config.retriever_proj_size, config.hidden_size)
