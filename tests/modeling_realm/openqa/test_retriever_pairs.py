"""Supervised retriever pairs: which retrieved block is a question's positive and which its hard negative, and the
collated inputs `in_batch_loss` scores (positives first, then hard negatives)."""

import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from modeling_realm.models.losses import in_batch_loss
from modeling_realm.openqa import RetrieverPairCollator, mine_retriever_pairs
from tests.helpers import VOCAB, tiny_config
from tokenization import RealmTokenizerFast

# Block i's embedding is e_i; a question's embedding ranks the blocks by the weights below (best first).
TEXTS = ["the cat was born in paris", "the dog was born in london", "alan turing was born in london",
         "the eiffel tower is in paris", "the river seine is in france"]
DOC_IDS = ["cat", "dog", "turing", "tower", "seine"]
RANKINGS = {  # question -> block order, best first
    "where was the cat born?": [3, 0, 4, 1, 2],
    "where was the dog born?": [2, 1, 0, 3, 4],
    "who is famous?": [4, 3, 2, 1, 0],
}


class StubRetriever(torch.nn.Module):
    """Embeds each question of RANKINGS as weights over the blocks' one-hot embeddings."""

    def __init__(self, tokenizer):
        super().__init__()
        self.config = tiny_config(retriever_proj_size=len(TEXTS), searcher_seq_len=16)
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")

    def embed_queries(self, input_ids, attention_mask=None, token_type_ids=None):
        rows = []
        for ids in input_ids:
            question = self.tokenizer.decode(ids, skip_special_tokens=True)
            order = RANKINGS[question]
            weights = torch.zeros(len(TEXTS))
            weights[order] = torch.arange(len(TEXTS), 0, -1, dtype=torch.float32)
            rows.append(weights)
        return torch.stack(rows)  # [batch, blocks]


@pytest.fixture(scope="module")
def setup():
    tokenizer = RealmTokenizerFast(vocab_file=str(VOCAB))
    index = BlockIndex.from_arrays(np.eye(len(TEXTS), dtype=np.float32), TEXTS, titles=[""] * len(TEXTS),
                                   doc_ids=DOC_IDS, progress=False)
    return StubRetriever(tokenizer), tokenizer, index


def record(question, answers, gold=None):
    return {"question": question, "answers": answers, **({"gold_doc_id": gold} if gold else {})}


def test_the_gold_passage_is_the_positive_and_the_hard_negative_holds_no_answer(setup):
    retriever, tokenizer, index = setup
    records = [record("where was the cat born?", ["paris"], gold="cat"),
               record("where was the dog born?", ["london"], gold="dog")]
    pairs, stats = mine_retriever_pairs(retriever, tokenizer, index, records, num_blocks=5, progress=False)
    # cat: block 3 ranks first but is another passage that holds "paris" (not a negative); block 4 is the negative.
    # dog: block 2 holds "london" but is not the gold passage: neither positive nor negative.
    assert pairs == [{"question": records[0]["question"], "positive": 0, "negative": 4},
                     {"question": records[1]["question"], "positive": 1, "negative": 0}]
    assert stats == {"questions": 2, "pairs": 2, "no_positive": 0, "no_negative": 0}


def test_without_a_gold_passage_the_best_block_with_an_answer_is_the_positive(setup):
    retriever, tokenizer, index = setup
    records = [record("where was the dog born?", ["london"]), record("who is famous?", ["seine", "paris"])]
    pairs, _ = mine_retriever_pairs(retriever, tokenizer, index, records, num_blocks=5, progress=False)
    assert [(p["positive"], p["negative"]) for p in pairs] == [(2, 0), (4, 2)]
    regex, _ = mine_retriever_pairs(retriever, tokenizer, index, [record("who is famous?", [r"turing|lon+don"])],
                                    num_blocks=5, match="regex", progress=False)
    assert [(p["positive"], p["negative"]) for p in regex] == [(2, 4)]


def test_questions_without_a_positive_are_left_out_and_counted(setup):
    retriever, tokenizer, index = setup
    records = [record("where was the cat born?", ["paris"], gold="cat"),  # gold block 0 ranks 2nd
               record("where was the cat born?", ["paris"], gold="turing"),  # block 2 ranks last: not in the top 2
               record("who is famous?", ["king"]),  # no retrieved block holds the answer
               record("where was the dog born?", ["in"], gold="turing")]  # every block holds "in": no negative
    pairs, stats = mine_retriever_pairs(retriever, tokenizer, index, records[:3], num_blocks=2, progress=False)
    assert pairs == [{"question": records[0]["question"], "positive": 0, "negative": None}]  # block 3 holds "paris"
    assert stats == {"questions": 3, "pairs": 1, "no_positive": 2, "no_negative": 1}
    pairs, stats = mine_retriever_pairs(retriever, tokenizer, index, records[3:], num_blocks=5, progress=False)
    assert pairs == [{"question": records[3]["question"], "positive": 2, "negative": None}]
    assert stats["no_negative"] == 1
    with pytest.raises(ValueError, match="match must be"):
        mine_retriever_pairs(retriever, tokenizer, index, records, match="glob")


def test_the_collator_puts_positives_first_then_hard_negatives(setup):
    _, tokenizer, index = setup
    pairs = [{"question": "where was the cat born?", "positive": 0, "negative": 4},
             {"question": "who is famous?", "positive": 2, "negative": None},
             {"question": "where was the dog born?", "positive": 1, "negative": 3}]
    batch = RetrieverPairCollator(tokenizer, index, query_length=16, block_length=32)(pairs)
    assert batch["input_ids"].shape[0] == 3 and batch["block_input_ids"].shape[0] == 5
    decoded = tokenizer.batch_decode(batch["block_input_ids"], skip_special_tokens=True)
    assert decoded == [TEXTS[i] for i in (0, 2, 1, 4, 3)]
    plain = RetrieverPairCollator(tokenizer, index, 16, 32, hard_negatives=False)(pairs)
    assert plain["block_input_ids"].shape[0] == 3


def test_in_batch_loss_scores_extra_blocks_as_negatives():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    own = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hard = torch.tensor([[0.0, 5.0]])  # scores above query 1's own block: it should be penalised
    without, with_hard = in_batch_loss(queries, own), in_batch_loss(queries, torch.cat([own, hard]))
    assert with_hard.num_candidates == 3 and with_hard.loss > without.loss
    assert with_hard.accuracy == 0.5  # query 1's best block is now the hard negative
    with pytest.raises(ValueError, match="at least one block per query"):
        in_batch_loss(queries, own[:1])
