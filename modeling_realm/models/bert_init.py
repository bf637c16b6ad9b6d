"""Initialise REALM models from a plain BERT checkpoint (e.g. bert-base-uncased or MiniLM).

REALM's towers are BERT encoders, so pretraining, ICT and small experiments start by copying a BERT's weights into
every tower (`realm.*` of each embedder, encoder and reader) and initialising the REALM heads randomly.
"""

import logging

from transformers import BertConfig, BertModel

from modeling_realm.models.configuration import RealmConfig

logger = logging.getLogger(__name__)

SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                 "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


def realm_config_from_bert(bert_config: BertConfig, **overrides) -> RealmConfig:
    """A `RealmConfig` whose backbone fields copy `bert_config`; `overrides` set any other field."""
    fields = {name: getattr(bert_config, name) for name in SHARED_FIELDS
              if getattr(bert_config, name, None) is not None}
    fields.update(overrides)
    return RealmConfig(**fields)


def init_from_bert(model_class, bert_name_or_path, **config_overrides):
    """Build `model_class` (any REALM model) with every BERT tower copied from `bert_name_or_path`.

    Args:
        model_class: e.g. `RealmRetriever`, `RealmKnowledgeAugEncoder`, `RealmForOpenQA`.
        bert_name_or_path: a directory or Hub id of a `BertModel` checkpoint.
        **config_overrides: REALM fields such as `retriever_proj_size=128` or `separate_query_embedder=True`.
    Returns:
        the model, with REALM-specific heads freshly initialised (set a torch seed first for reproducibility).
    """
    bert = BertModel.from_pretrained(bert_name_or_path)
    model = model_class(realm_config_from_bert(bert.config, **config_overrides))
    state = bert.state_dict()
    towers = [name for name, module in model.named_modules() if isinstance(module, BertModel)]
    for name in towers:
        module = model.get_submodule(name)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or missing:
            logger.info("Tower %s from %s: missing %s, unexpected %s", name, bert_name_or_path, missing, unexpected)
    logger.info("Initialised %d BERT tower(s) of %s from %s", len(towers), model_class.__name__, bert_name_or_path)
    return model
