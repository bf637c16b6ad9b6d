"""The starting point of open-QA fine-tuning when no `RealmForOpenQA` checkpoint exists yet (ORQA's recipe): the
question tower from a trained (or freshly initialised) retriever, the reader from a BERT, and the block embeddings
of the index that retriever's block tower built."""

import logging

import numpy as np
import torch

from modeling_realm.models.bert_init import init_from_bert
from modeling_realm.openqa.model import RealmForOpenQA
from modeling_realm.retrieval import check_index

logger = logging.getLogger(__name__)


def openqa_from_retriever(retriever, index, reader_model: str, **config) -> RealmForOpenQA:
    """A `RealmForOpenQA` to fine-tune: `retriever`'s query tower asks, a reader copied from the BERT checkpoint
    `reader_model` reads, and `block_emb` holds `index`'s embeddings (the index is attached for retrieval).

    Args:
        retriever: a `RealmRetriever` (or `RealmScorer`) whose block tower built `index`.
        index: a `BlockIndex` (anything `retrieval.RetrievalIndex`) of that retriever's block embeddings.
        reader_model: a directory or Hub id of a `BertModel` checkpoint for the reader.
        **config: reader and search fields of `RealmConfig`, e.g. `reader_beam_size=5`, `searcher_beam_size=32`,
            `reader_seq_len=320`.
    """
    check_index(index, retriever.config.retriever_proj_size)
    if hasattr(index, "check_compatible"):
        index.check_compatible(retriever)  # warns when the index was built by another block tower
    tower = retriever.query_embedder
    sizes = {"retriever_proj_size": tower.config.retriever_proj_size,
             "retriever_pooling": tower.config.retriever_pooling}
    # The projection is replaced by the retriever's below; "identity" only avoids warning about a random one.
    projection = "identity" if sizes["retriever_proj_size"] == tower.config.hidden_size else "random"
    model = init_from_bert(RealmForOpenQA, reader_model, projection=projection, score_scale=None,
                           num_block_records=len(index), **sizes, **config)
    if model.config.hidden_size != tower.config.hidden_size:
        raise ValueError(f"The reader checkpoint {reader_model} has hidden size {model.config.hidden_size} but the "
                         f"retriever's question tower {tower.config.hidden_size}; RealmForOpenQA shares one "
                         "config between them: pick a reader of the retriever's size.")
    model.embedder.load_state_dict(tower.state_dict())
    with torch.no_grad():
        # [num_blocks, retriever_proj_size]
        model.block_emb.copy_(torch.from_numpy(np.asarray(index.get_embeddings(list(range(len(index)))))))
    model.index = index
    logger.info("RealmForOpenQA from %s's question tower and a reader from %s (%d blocks)",
                type(retriever).__name__, reader_model, len(index))
    return model
