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
from .pretrained import RealmPreTrainedModel
from .reader import RealmReader
from .retriever import RealmRetriever
from .scorer import RealmScorer

register_auto_classes()

__all__ = [
    "RealmConfig",
    "RealmEmbedder",
    "RealmEmbedderOutput",
    "RealmForOpenQA",
    "RealmForOpenQAOutput",
    "RealmKnowledgeAugEncoder",
    "RealmPreTrainedModel",
    "RealmReader",
    "RealmReaderOutput",
    "RealmRetriever",
    "RealmRetrieverOutput",
    "RealmScorer",
    "RealmScorerOutput",
]
