"""REALM for transformers 5: the models, open-domain QA, pretraining, and Hub sharing (ARCHITECTURE.md at the
repository root has the floor plan).

`import modeling_realm` registers "realm" with AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer and the
`"open-domain-qa"` pipeline. Subpackages: `models` (the classes), `openqa` (answering, fine-tuning batches,
evaluation), `pretraining` (ICT, REALM, index refresh), `hub` (sharing models), `apps` (console scripts and demo).
"""

from modeling_realm.auto import register_auto_classes
from modeling_realm.checkpointing import (
    checkpoint_to_resume,
    load_trainer_state,
    save_checkpoint,
    save_trained,
    write_json,
)
from modeling_realm.models import (
    RealmConfig,
    RealmEmbedder,
    RealmEmbedderOutput,
    RealmForOpenQAOutput,
    RealmKnowledgeAugEncoder,
    RealmPreTrainedModel,
    RealmReader,
    RealmReaderOutput,
    RealmRetriever,
    RealmRetrieverOutput,
    RealmScorer,
    RealmScorerOutput,
    init_from_bert,
    load_retriever,
    realm_config_from_bert,
)
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

__all__ = [
    "IndexRefresher",
    "MaskedQueryCollator",
    "OpenDomainQAPipeline",
    "RealmConfig",
    "RealmEmbedder",
    "RealmEmbedderOutput",
    "RealmForOpenQA",
    "RealmForOpenQAOutput",
    "RealmKnowledgeAugEncoder",
    "RealmPreTrainedModel",
    "RealmPretrainingModel",
    "RealmReader",
    "RealmReaderOutput",
    "RealmRetriever",
    "RealmRetrieverOutput",
    "RealmScorer",
    "RealmScorerOutput",
    "RetrievalIndex",
    "RetrievedBlocks",
    "SearchableIndex",
    "checkpoint_to_resume",
    "evaluate_openqa",
    "init_from_bert",
    "load_retriever",
    "load_trainer_state",
    "realm_config_from_bert",
    "retrieve_blocks",
    "save_checkpoint",
    "save_trained",
    "training_batch",
    "write_json",
]
