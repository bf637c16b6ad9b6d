"""REALM pretraining batches and loss (modeling_realm.pretraining.realm): own-document blocks are never retrieved, the
null block comes first, encoder inputs keep the masked query's positions, gradients reach both towers and the encoder,
the loss is the encoder's marginal loss, and the retrieval utility equals a hand computation."""

import functools
import re

import numpy as np
import pytest
import torch

from index_builder import BlockIndex
from modeling_realm import RealmKnowledgeAugEncoder, RealmRetriever
from modeling_realm.apps.synthetic import documents, invent_people
from modeling_realm.pretraining.realm import (
    MaskedQueryCollator,
    RealmPretrainingModel,
    candidate_inputs,
    embed_blocks_now,
    freeze_unused_parameters,
    pretraining_inputs,
    query_examples,
)
from modeling_realm.retrieval import retrieve_blocks
from tests.helpers import tiny_config
from tokenization import RealmTokenizerFast, split_into_blocks

NUM_PEOPLE = 12
BLOCK_WORDPIECES = 14  # each biography (3-4 sentences) gives 2-4 blocks, so own-document exclusion matters


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def make_world(root, num_people: int = NUM_PEOPLE, separate: bool = True) -> dict:
    """Invented biographies cut into blocks, a word-level tokenizer of them, a tiny retriever (separate towers) and
    encoder (dropout 0), and a Flat BlockIndex of the blocks embedded by the retriever, saved in root/index."""
    import datasets

    docs = documents(invent_people(num_people))
    vocab = sorted({w for d in docs for w in words(d["title"] + " " + d["text"])})
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocab]) + "\n")
    tokenizer = RealmTokenizerFast(vocab_file=str(root / "vocab.txt"))
    config = tiny_config(vocab_size=len(vocab) + 5, max_position_embeddings=128, initializer_range=0.1,
                         separate_query_embedder=separate)
    torch.manual_seed(0)
    retriever, encoder = RealmRetriever(config).eval(), RealmKnowledgeAugEncoder(config).eval()
    blocks = split_into_blocks(datasets.Dataset.from_list(docs), tokenizer, max_block_length=BLOCK_WORDPIECES)
    rows = blocks.to_list()
    embeddings = embed_blocks_now(retriever, tokenizer, rows).numpy()
    index = BlockIndex.from_arrays(embeddings, [r["text"] for r in rows], titles=[r["title"] for r in rows],
                                   doc_ids=[r["doc_id"] for r in rows], progress=False)
    index.save_to_disk(root / "index")
    return {"tokenizer": tokenizer, "retriever": retriever, "encoder": encoder, "blocks": blocks, "docs": docs,
            "index": BlockIndex.load_from_disk(root / "index"), "root": root}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("pretraining"))


def masked_batch(world, masking: str = "random_token", size: int = 4, seed: int = 0) -> dict:
    rows = world["blocks"].select(range(size)).to_list()
    return MaskedQueryCollator(world["tokenizer"], masking, query_length=24, seed=seed)(rows)


def step_inputs(world, batch, k: int = 4):
    retrieve = functools.partial(retrieve_blocks, world["index"])
    return pretraining_inputs(world["retriever"], world["tokenizer"], batch, retrieve, k, 64, 96)


def test_retrieval_skips_every_block_of_the_querys_own_document(world):
    index, blocks = world["index"], world["blocks"]
    doc_of = np.asarray(blocks["doc_id"])
    embeddings = index.get_embeddings(np.arange(len(index)))
    # Queries equal to a block's own embedding: its own document ranks first and must be skipped, widening the search.
    queries = embeddings[[0, 5, 9]]
    own = [str(doc_of[i]) for i in (0, 5, 9)]
    for n in (1, 3, len(index) - 4):
        found = retrieve_blocks(index, queries, n, own)
        assert found.block_ids.shape == (3, n)
        for row, doc in enumerate(own):
            others = np.flatnonzero(doc_of != doc)
            exact = others[np.argsort(-(embeddings[others] @ queries[row]), kind="stable")][:n]
            assert [b["doc_id"] for b in found.blocks[row]] == [str(doc_of[i]) for i in found.block_ids[row]]
            assert doc not in {b["doc_id"] for b in found.blocks[row]}
            np.testing.assert_array_equal(np.sort(found.block_ids[row]), np.sort(exact))
            assert np.all(np.diff(found.scores[row]) <= 1e-6)
    # Without doc ids nothing is excluded: the block itself comes first.
    assert retrieve_blocks(index, queries, 1).block_ids[:, 0].tolist() == [0, 5, 9]
    with pytest.raises(ValueError, match="lie outside document"):
        retrieve_blocks(index, queries[:1], len(index) - 1, own[:1])
    with pytest.raises(ValueError, match="one .or None. per query"):
        retrieve_blocks(index, queries, 2, own[:2])


def test_candidates_put_the_null_block_first_after_the_masked_query(world):
    tokenizer = world["tokenizer"]
    batch = masked_batch(world)
    inputs, retrieved = step_inputs(world, batch, k=4)
    b, k, seq = inputs["input_ids"].shape
    assert (b, k) == (4, 4) and retrieved.block_ids.shape == (4, 3)
    for row in range(b):  # no candidate comes from the query's own document
        assert batch["doc_ids"][row] not in {block["doc_id"] for block in retrieved.blocks[row]}
    # Block tower: row 0 is the null block [CLS] [SEP], then each query's blocks tokenised as the index builder does.
    null = inputs["block_input_ids"][0][inputs["block_attention_mask"][0].bool()]
    assert null.tolist() == [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert inputs["block_input_ids"].shape[0] == 1 + b * (k - 1)
    first = retrieved.blocks[0][0]
    expected = tokenizer(first["title"], first["text"])["input_ids"]
    assert inputs["block_input_ids"][1][inputs["block_attention_mask"][1].bool()].tolist() == expected
    for row in range(b):
        length = int(batch["attention_mask"][row].sum())
        query = batch["input_ids"][row, :length].tolist()
        for candidate in range(k):
            ids = inputs["input_ids"][row, candidate][inputs["attention_mask"][row, candidate].bool()].tolist()
            types = inputs["token_type_ids"][row, candidate][:len(ids)].tolist()
            text = "" if candidate == 0 else retrieved.blocks[row][candidate - 1]["text"]
            block = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert ids == query + block + [tokenizer.sep_token_id]
            assert types == [0] * length + [1] * (len(block) + 1)
        # The labels sit on the masked query positions, where the inputs hold [MASK] (or BERT's 10%/10%).
        labels = inputs["labels"][row]
        assert torch.equal(labels[:batch["labels"].shape[1]][:length], batch["labels"][row, :length])
        assert (labels[length:] == -100).all() and inputs["mlm_mask"][row].sum() == (labels != -100).sum() > 0


def test_masked_queries_depend_only_on_seed_epoch_and_rows(world):
    rows = world["blocks"].select(range(6)).to_list()
    collator = MaskedQueryCollator(world["tokenizer"], "random_token", query_length=24, seed=3)
    first, again = collator(rows), collator(rows)
    assert all(torch.equal(first[key], again[key]) for key in ("input_ids", "labels"))
    assert first["doc_ids"] == [r["doc_id"] for r in rows]
    collator.set_epoch(1)
    assert not torch.equal(collator(rows)["labels"], first["labels"])
    salient = MaskedQueryCollator(world["tokenizer"], "salient", query_length=24, seed=3, salient_backend="regex")
    out = salient(rows)
    assert out["input_ids"].shape[1] == int(out["attention_mask"].sum(1).max()) <= 24
    assert ((out["labels"] != -100).sum(1) > 0).all()


def test_query_examples_are_short_and_keep_their_documents(world):
    queries = query_examples(world["blocks"], world["tokenizer"], query_length=10)
    assert len(queries) > len(world["blocks"])
    lengths = [len(world["tokenizer"](text)["input_ids"]) for text in queries["text"]]
    assert max(lengths) <= 10
    by_doc = {}
    for doc, text in zip(queries["doc_id"], queries["text"]):
        by_doc.setdefault(doc, []).append(text)
    for doc in world["docs"]:
        assert words(" ".join(by_doc[doc["doc_id"]])) == words(doc["text"])
    with pytest.raises(ValueError, match="doc_id"):
        query_examples(world["blocks"].remove_columns("doc_id"), world["tokenizer"])


def test_gradients_reach_both_towers_and_the_encoder(world):
    model = RealmPretrainingModel(world["retriever"], world["encoder"])
    frozen = freeze_unused_parameters(model)
    assert frozen and all(".cls.predictions." in n or n.startswith("encoder.realm.pooler.") for n in frozen)
    model.zero_grad()
    inputs, _ = step_inputs(world, masked_batch(world), k=4)
    out = model(**inputs)
    assert out.loss.isfinite() and out.relevance_score.shape == (4, 4)
    out.loss.backward()
    for prefix in ("retriever.query_embedder.", "retriever.embedder.", "encoder.realm.encoder.", "encoder.cls."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        assert grads and all(g is not None for g in grads), prefix
        assert sum(g.abs().sum() for g in grads) > 0, prefix
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    for param in model.parameters():
        param.requires_grad_(True)
    model.zero_grad()


def test_loss_is_the_encoders_marginal_loss_and_ru_matches_a_hand_computation(world):
    model = RealmPretrainingModel(world["retriever"], world["encoder"])
    inputs, _ = step_inputs(world, masked_batch(world, masking="random_span"), k=3)
    with torch.no_grad():
        out = model(**inputs)
        # The full encoder, logits for every position, gives the same loss for the same relevance scores.
        reference = world["encoder"](input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     token_type_ids=inputs["token_type_ids"], relevance_score=out.relevance_score,
                                     labels=inputs["labels"], mlm_mask=inputs["mlm_mask"])
        # The relevance scores by hand: query tower . block tower of each candidate (the null block's tokens first).
        queries = world["retriever"].embed_queries(inputs["query_input_ids"], inputs["query_attention_mask"],
                                                   inputs["query_token_type_ids"])
        blocks = world["retriever"].embed_blocks(inputs["block_input_ids"], inputs["block_attention_mask"],
                                                 inputs["block_token_type_ids"])
    torch.testing.assert_close(out.loss, reference.loss, atol=1e-5, rtol=1e-5)
    for row in range(4):
        rows = [0] + [1 + row * 2 + j for j in range(2)]
        torch.testing.assert_close(out.relevance_score[row], blocks[rows] @ queries[row], atol=1e-5, rtol=1e-5)
    # RU = sum over masked positions of log p(token | top block) - log p(token | null block).
    log_probs = reference.logits.log_softmax(-1).view(4, 3, *reference.logits.shape[1:])
    for row in range(4):
        positions = torch.nonzero(inputs["labels"][row] != -100).squeeze(1)
        tokens = inputs["labels"][row, positions]
        by_hand = [log_probs[row, z, positions, tokens].sum() for z in range(3)]
        torch.testing.assert_close(out.candidate_log_likelihood[row], torch.stack(by_hand), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.retrieval_utility[row], by_hand[1] - by_hand[0], atol=1e-4, rtol=1e-5)


def test_inputs_are_checked(world):
    batch = masked_batch(world)
    with pytest.raises(ValueError, match="same number"):
        candidate_inputs(world["tokenizer"], batch, [[{"title": "", "text": "a"}]] * 3)
    with pytest.raises(ValueError, match="num_candidates must be >= 2"):
        step_inputs(world, batch, k=1)
    model = RealmPretrainingModel(world["retriever"], world["encoder"])
    inputs, _ = step_inputs(world, batch, k=3)
    inputs["block_input_ids"] = inputs["block_input_ids"][1:]
    with pytest.raises(ValueError, match="block-tower rows"):
        model(**inputs)
    other = RealmKnowledgeAugEncoder(tiny_config(vocab_size=50, max_position_embeddings=128))
    with pytest.raises(ValueError, match="one tokenizer"):
        RealmPretrainingModel(world["retriever"], other)
