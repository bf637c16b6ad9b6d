"""The REALM model classes (transformers 4.57.6's state dicts and outputs), their configuration, heads, span scoring,
losses, and how they are created from a BERT checkpoint or loaded from whatever a user points at."""

from modeling_realm.models.bert_init import init_from_bert, realm_config_from_bert, sentence_transformers_pooling
from modeling_realm.models.configuration import RealmConfig
from modeling_realm.models.embedder import RealmEmbedder
from modeling_realm.models.encoder import RealmKnowledgeAugEncoder
from modeling_realm.models.loading import demo_model_path, load_retriever
from modeling_realm.models.outputs import (
    RealmEmbedderOutput,
    RealmForOpenQAOutput,
    RealmReaderOutput,
    RealmRetrieverOutput,
    RealmScorerOutput,
)
from modeling_realm.models.pretrained import RealmPreTrainedModel, evaluation_mode
from modeling_realm.models.reader import RealmReader
from modeling_realm.models.retriever import RealmRetriever
from modeling_realm.models.scorer import RealmScorer

__all__ = [
    "RealmConfig",
    "RealmEmbedder",
    "RealmEmbedderOutput",
    "RealmForOpenQAOutput",
    "RealmKnowledgeAugEncoder",
    "RealmPreTrainedModel",
    "RealmReader",
    "RealmReaderOutput",
    "RealmRetriever",
    "RealmRetrieverOutput",
    "RealmScorer",
    "RealmScorerOutput",
    "demo_model_path",
    "evaluation_mode",
    "init_from_bert",
    "load_retriever",
    "realm_config_from_bert",
    "sentence_transformers_pooling",
]
