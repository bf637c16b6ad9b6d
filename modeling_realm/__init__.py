"""REALM models for transformers 5: configuration, the model classes and their Auto* registration."""

from .auto import register_auto_classes
from .configuration import RealmConfig
from .embedder import RealmEmbedder
from .encoder import RealmKnowledgeAugEncoder
from .openqa import RealmForOpenQA
from .outputs import (
    RealmEmbedderOutput,
    RealmForOpenQAOutput,
    RealmReaderOutput,
    RealmRetrieverOutput,
    RealmScorerOutput,
)
from .pipeline import OpenDomainQAPipeline, register_pipeline
from .pretrained import RealmPreTrainedModel
from .reader import RealmReader
from .retriever import RealmRetriever
from .scorer import RealmScorer

register_auto_classes()
register_pipeline()

__all__ = [
    "RealmConfig",
    "RealmEmbedder",
    "RealmEmbedderOutput",
    "RealmForOpenQA",
    "RealmForOpenQAOutput",
    "OpenDomainQAPipeline",
    "RealmKnowledgeAugEncoder",
    "RealmPreTrainedModel",
    "RealmReader",
    "RealmReaderOutput",
    "RealmRetriever",
    "RealmRetrieverOutput",
    "RealmScorer",
    "RealmScorerOutput",
]
