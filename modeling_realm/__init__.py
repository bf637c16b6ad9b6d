"""REALM for transformers 5: the models, open-domain QA, pretraining, and Hub sharing (ARCHITECTURE.md at the
repository root has the floor plan).

`import modeling_realm` registers "realm" with AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer and the
`"open-domain-qa"` pipeline. Subpackages: `models` (the classes), `openqa` (answering, fine-tuning batches,
evaluation), `pretraining` (ICT, REALM, index refresh), `training` (what the training scripts share), `hub` (sharing
models), `apps` (console scripts and demo). This module re-exports the names most code needs.
"""

from modeling_realm import models
from modeling_realm.auto import register_auto_classes
from modeling_realm.models import *  # noqa: F403 - the model classes, their outputs, init_from_bert, load_retriever
from modeling_realm.openqa import (
           OpenDomainQAPipeline,
           RealmForOpenQA,
           evaluate_openqa,
           register_pipeline,
           training_batch,
)
from modeling_realm.pretraining import IndexRefresher, MaskedQueryCollator, RealmPretrainingModel
from modeling_realm.retrieval import RetrievalIndex, RetrievedBlocks, SearchableIndex, retrieve_blocks

register_auto_classes()
register_pipeline()

__all__ = [*models.__all__, "IndexRefresher", "MaskedQueryCollator", "OpenDomainQAPipeline", "RealmForOpenQA",
           "RealmPretrainingModel", "RetrievalIndex", "RetrievedBlocks", "SearchableIndex", "evaluate_openqa",
           "retrieve_blocks", "training_batch"]
