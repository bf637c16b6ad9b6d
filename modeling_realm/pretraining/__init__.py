"""REALM pretraining: the ICT warm start (`ict`), masked queries and the knowledge-augmented model trained with the
marginal likelihood over retrieved blocks (`realm`), and keeping the index fresh while the block tower trains
(`refresh`, with `tower_snapshot` and `index_load` for the asynchronous mode)."""

from modeling_realm.models.losses import ict_loss, in_batch_loss
from modeling_realm.pretraining.ict import (
    DEFAULT_KEEP_PROB,
    ICT_QUERY_LENGTH,
    IctCollator,
    can_make_ict_example,
    freeze_unused_heads,
    ict_examples,
    with_separate_towers,
)
from modeling_realm.pretraining.realm import (
    DEFAULT_ENCODER_LENGTH,
    DEFAULT_NUM_CANDIDATES,
    NULL_BLOCK,
    MaskedQueryCollator,
    RealmPretrainingModel,
    RealmPretrainingOutput,
    candidate_inputs,
    embed_blocks_now,
    freeze_unused_parameters,
    pretraining_inputs,
    query_examples,
    search_embeddings,
)
from modeling_realm.pretraining.refresh import DEFAULT_REFRESH_EVERY, DEFAULT_RERANK_FACTOR, MODES, IndexRefresher

__all__ = [
    "DEFAULT_ENCODER_LENGTH",
    "DEFAULT_KEEP_PROB",
    "ICT_QUERY_LENGTH",
    "DEFAULT_NUM_CANDIDATES",
    "DEFAULT_REFRESH_EVERY",
    "DEFAULT_RERANK_FACTOR",
    "MODES",
    "NULL_BLOCK",
    "IctCollator",
    "IndexRefresher",
    "MaskedQueryCollator",
    "RealmPretrainingModel",
    "RealmPretrainingOutput",
    "can_make_ict_example",
    "candidate_inputs",
    "embed_blocks_now",
    "freeze_unused_heads",
    "freeze_unused_parameters",
    "ict_examples",
    "ict_loss",
    "in_batch_loss",
    "pretraining_inputs",
    "query_examples",
    "search_embeddings",
    "with_separate_towers",
]
