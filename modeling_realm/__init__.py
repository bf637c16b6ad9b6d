"""REALM for transformers 5: the models, open-domain QA, pretraining, and Hub sharing (ARCHITECTURE.md at the
repository root has the floor plan).

`import modeling_realm` registers "realm" with AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, the
`"open-domain-qa"` pipeline and, for REALM checkpoints only, the `"question-answering"` pipeline transformers 5
removed. Subpackages: `models` (the classes), `openqa` (answering, fine-tuning batches, evaluation), `pretraining`
(ICT, REALM, index refresh), `training` (what the training scripts share), `hub` (sharing models), `apps` (console
scripts and demo). This module re-exports the names most code needs.
"""

import importlib

from modeling_realm import models
from modeling_realm.auto import register_auto_classes
from modeling_realm.models import *  # noqa: F403 - the model classes, their outputs, init_from_bert, load_retriever
from modeling_realm.openqa import (
           OpenDomainQAPipeline,
           RealmForOpenQA,
           RealmQuestionAnsweringPipeline,
           evaluate_openqa,
           register_pipeline,
           register_question_answering,
           training_batch,
)
from modeling_realm.retrieval import RetrievalIndex, RetrievedBlocks, SearchableIndex, retrieve_blocks

register_auto_classes()
register_pipeline()
register_question_answering()

# Pretraining needs index_builder (FAISS, datasets: about a second to import); its names load on first use.
LAZY = dict.fromkeys(("IndexRefresher", "MaskedQueryCollator", "RealmPretrainingModel"), "modeling_realm.pretraining")


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'modeling_realm' has no attribute {name!r}")


__all__ = [*models.__all__, *LAZY, "OpenDomainQAPipeline", "RealmForOpenQA", "RealmQuestionAnsweringPipeline",
           "RetrievalIndex", "RetrievedBlocks", "SearchableIndex", "evaluate_openqa", "retrieve_blocks",
           "training_batch"]
