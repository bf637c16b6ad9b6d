"""Register REALM with the transformers Auto classes (run once, on `import modeling_realm`).

`AutoModel` maps `RealmConfig` to all REALM classes; transformers picks the one named in the checkpoint's
`config.json` `architectures` (the first, `RealmEmbedder`, when none is named).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from modeling_realm.models.configuration import RealmConfig
from modeling_realm.models.embedder import RealmEmbedder
from modeling_realm.models.encoder import RealmKnowledgeAugEncoder
from modeling_realm.models.reader import RealmReader
from modeling_realm.models.retriever import RealmRetriever
from modeling_realm.models.scorer import RealmScorer
from modeling_realm.openqa.model import RealmForOpenQA
from tokenization import RealmTokenizer, RealmTokenizerFast

MODEL_CLASSES = (RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader, RealmRetriever, RealmForOpenQA)


def register_auto_classes():
    AutoConfig.register(RealmConfig.model_type, RealmConfig, exist_ok=True)
    AutoModel.register(RealmConfig, MODEL_CLASSES, exist_ok=True)
    AutoModelForMaskedLM.register(RealmConfig, RealmKnowledgeAugEncoder, exist_ok=True)
    AutoTokenizer.register(RealmConfig, slow_tokenizer_class=RealmTokenizer, fast_tokenizer_class=RealmTokenizerFast,
                           exist_ok=True)
