"""openqa_from_retriever: ORQA's starting point from a retriever, its index and a BERT for the reader."""

import datasets
import pytest
import torch

from index_builder import build_index
from modeling_realm import RealmRetriever
from modeling_realm.openqa import openqa_from_retriever
from tests.helpers import VOCAB, tiny_config
from tests.modeling_realm.models.test_init_options import save_bert
from tokenization import RealmTokenizerFast

TEXTS = ["alan turing was a british mathematician", "paris is the capital of france",
         "the seine flows through paris", "london is the capital of england"]


def index_of(retriever, tokenizer, directory):
    blocks = datasets.Dataset.from_dict({"title": [""] * len(TEXTS), "text": TEXTS})
    return build_index(blocks, retriever, tokenizer, directory, progress=False)


def test_the_question_tower_is_the_retrievers_and_the_reader_the_berts(tmp_path):
    bert = save_bert(tmp_path / "bert")
    torch.manual_seed(0)
    retriever = RealmRetriever(tiny_config(separate_query_embedder=True)).eval()
    tokenizer = RealmTokenizerFast(vocab_file=str(VOCAB))
    index = index_of(retriever, tokenizer, tmp_path / "index")
    model = openqa_from_retriever(retriever, index, str(tmp_path / "bert"), reader_beam_size=2, searcher_beam_size=3)
    assert model.index is index and (model.config.reader_beam_size, model.config.searcher_beam_size) == (2, 3)
    for name, value in retriever.query_embedder.state_dict().items():
        assert torch.equal(model.embedder.state_dict()[name], value), name
    torch.testing.assert_close(model.block_emb, torch.from_numpy(index.get_embeddings(list(range(4)))))
    for name, value in bert.state_dict().items():
        assert torch.equal(model.reader.realm.state_dict()[name], value), name
    model.tokenizer = tokenizer
    assert model.answer("what is the capital of france?")["doc_id"] in {str(i) for i in range(4)}


def test_a_reader_of_another_size_or_an_index_of_another_dimension_is_refused(tmp_path):
    save_bert(tmp_path / "bert")
    torch.manual_seed(0)
    retriever = RealmRetriever(tiny_config()).eval()
    tokenizer = RealmTokenizerFast(vocab_file=str(VOCAB))
    index = index_of(retriever, tokenizer, tmp_path / "index")
    wide = RealmRetriever(tiny_config(hidden_size=48, num_attention_heads=4)).eval()
    with pytest.warns(UserWarning, match="weights differ"), \
            pytest.raises(ValueError, match="has hidden size 32 but the retriever's question tower 48"):
        openqa_from_retriever(wide, index, str(tmp_path / "bert"))
    other = RealmRetriever(tiny_config(retriever_proj_size=8)).eval()
    with pytest.raises(ValueError, match="holds 16-d embeddings but this model produces 8-d"):
        openqa_from_retriever(other, index, str(tmp_path / "bert"))
