"""The Inverse Cloze Task library: example construction, the collator, the loss, the cross-process gather, towers."""

import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_realm import RealmRetriever
from modeling_realm.models.losses import ict_loss, in_batch_loss
from modeling_realm.pretraining.ict import (
    IctCollator,
    can_make_ict_example,
    freeze_unused_heads,
    ict_examples,
    remove_span,
    with_separate_towers,
)
from tests.helpers import VOCAB, tiny_config
from tokenization import RealmTokenizerFast, split_sentences
from tokenization.block_inputs import block_inputs

ROOT = Path(__file__).resolve().parents[3]

# Words of the fixture vocabulary; the sentence splitter needs a capital after each full stop.
BLOCKS = [
    {"block_id": 0, "title": "alan turing", "text": "Alan Turing was a british mathematician. He was born in "
     "London. London is the capital city of England. It is a famous city."},
    {"block_id": 1, "title": "paris", "text": "Paris is the capital of France. The Seine is the river in Paris."},
    {"block_id": 2, "title": "", "text": "The eiffel tower is in Paris! Who was the first president?"},
    {"block_id": 3, "title": "hello", "text": "Hello world."},  # one sentence: no ICT example
]


@pytest.fixture(scope="module")
def tokenizer():
    return RealmTokenizerFast(vocab_file=str(VOCAB))


def test_the_query_sentence_is_removed_about_90_percent_of_the_time():
    rng, block = random.Random(0), BLOCKS[0]
    sentences = split_sentences(block["text"])
    draws, removed, chosen = 3000, 0, set()
    for _ in range(draws):
        (query,), ((title, target),) = ict_examples([block], rng)
        assert query in sentences and title == block["title"]
        chosen.add(query)
        rest = [s for s in sentences if s != query]
        if target == block["text"]:
            continue
        removed += 1
        assert target == " ".join(rest) and query not in split_sentences(target)
    assert chosen == set(sentences)  # every sentence can be the query
    # binomial(3000, 0.9): standard deviation 0.0055, so this fails only if the rate is wrong
    assert abs(removed / draws - 0.9) < 0.03, removed / draws


def test_keep_prob_extremes_columns_and_short_blocks():
    rows = BLOCKS[:3]
    columns = {"title": [r["title"] for r in rows], "text": [r["text"] for r in rows]}
    assert ict_examples(rows, random.Random(5)) == ict_examples(columns, random.Random(5))
    queries, targets = ict_examples(rows, random.Random(1), keep_prob=1.0)
    assert [t for _, t in targets] == [r["text"] for r in rows]
    queries, targets = ict_examples(rows, random.Random(1), keep_prob=0.0)
    assert all(q not in t and len(t) < len(r["text"]) for q, (_, t), r in zip(queries, targets, rows))
    queries, targets = ict_examples(BLOCKS, random.Random(1))  # the one-sentence block gives no example
    assert len(queries) == len(targets) == 3 and not can_make_ict_example(BLOCKS[3]["text"])
    assert ict_examples({"text": ["A b. C d."]}, random.Random(0))[1][0][0] == ""  # no title column: ""
    with pytest.raises(ValueError, match="keep_prob"):
        ict_examples(rows, random.Random(0), keep_prob=1.5)
    with pytest.raises(ValueError, match="'text'"):
        ict_examples([{"title": "x"}], random.Random(0))


def test_remove_span_joins_the_rest_with_one_separator():
    text = "One two.  Three four.\nFive six."
    assert remove_span(text, 0, 8) == "Three four.\nFive six."
    assert remove_span(text, 10, 21) == "One two.\nFive six."  # a line break was in the gap: keep one
    assert remove_span("One. Two. Three.", 5, 9) == "One. Three."
    assert remove_span(text, 22, 31) == "One two.  Three four."


def test_collator_targets_are_block_inputs_of_the_block_without_its_query(tokenizer):
    rows = BLOCKS[:3]
    collator = IctCollator(tokenizer, query_length=16, block_length=40, keep_prob=0.0, seed=3)
    batch = collator(rows)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "block_input_ids", "block_attention_mask",
                          "block_token_type_ids"}
    assert batch["input_ids"].shape[0] == batch["block_input_ids"].shape[0] == 3
    assert batch["input_ids"].shape[1] <= 16 and batch["block_input_ids"].shape[1] <= 40
    for i, row in enumerate(rows):
        query_ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        # the query is one of the block's sentences, and the target is block_inputs of the rest
        matches = [s for s in split_sentences(row["text"]) if tokenizer(s)["input_ids"] == query_ids]
        assert matches, f"query of row {i} is no sentence of its block"
        start = row["text"].index(matches[0])
        rest = remove_span(row["text"], start, start + len(matches[0]))
        expected = block_inputs(tokenizer, [row["title"]], [rest], max_length=40)["input_ids"][0].tolist()
        got = batch["block_input_ids"][i][batch["block_attention_mask"][i].bool()].tolist()
        assert got == expected
    # Draws depend on (seed, epoch, block ids) only: the same again, new ones in another epoch.
    again = IctCollator(tokenizer, 16, 40, keep_prob=0.0, seed=3)(rows)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    epochs = []
    for epoch in range(6):
        collator.set_epoch(epoch)
        epochs.append(collator(rows)["input_ids"].tolist())
    assert any(ids != epochs[0] for ids in epochs[1:])
    with pytest.raises(ValueError, match="two sentences"):
        collator([BLOCKS[3]])


def test_ict_loss_equals_a_hand_computation():
    queries = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    blocks = torch.tensor([[2.0, 1.0], [0.0, 1.0], [-1.0, 3.0]])
    labels = torch.tensor([0, 2])
    expected = 0.0
    for query, label in zip(queries.tolist(), labels.tolist()):
        scores = [sum(q * b for q, b in zip(query, block)) for block in blocks.tolist()]
        expected += -(scores[label] - math.log(sum(math.exp(s) for s in scores)))
    assert ict_loss(queries, blocks, labels).item() == pytest.approx(expected / 2, abs=1e-6)
    assert ict_loss(queries.half(), blocks.half(), labels).dtype == torch.float32


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_in_batch_loss_single_process_and_gradients_reach_both_towers(tokenizer, pooling):
    torch.manual_seed(0)
    model = with_separate_towers(RealmRetriever(tiny_config(retriever_pooling=pooling)))
    frozen = freeze_unused_heads(model)
    poolers = [name for name in frozen if ".realm.pooler." in f".{name}"]
    assert len(poolers) == (4 if pooling == "mean" else 0)
    assert frozen and all(".cls.predictions." in f".{name}" for name in frozen if name not in poolers)
    out = model(**IctCollator(tokenizer, 16, 48, seed=0)(BLOCKS[:3]), return_dict=True)
    result = in_batch_loss(out.query_embeddings, out.block_embeddings)
    assert result.num_candidates == 3 and 0.0 <= result.accuracy.item() <= 1.0
    assert result.loss.item() == pytest.approx(
        ict_loss(out.query_embeddings, out.block_embeddings, torch.arange(3)).item())
    result.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert model.query_embedder.cls.dense.weight.grad.abs().sum() > 0
    assert model.embedder.cls.dense.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least one block per query"):
        in_batch_loss(out.query_embeddings, out.block_embeddings[:2])


def test_with_separate_towers_copies_the_shared_tower(tmp_path):
    shared = RealmRetriever(tiny_config())
    separate = with_separate_towers(shared)
    assert separate.config.separate_query_embedder and not shared.config.separate_query_embedder
    assert separate.query_embedder is not separate.embedder
    reference = shared.embedder.state_dict()
    for tower in (separate.embedder, separate.query_embedder):
        assert all(torch.equal(tensor, reference[name]) for name, tensor in tower.state_dict().items())
    assert with_separate_towers(separate) is separate
    separate.save_pretrained(tmp_path)
    reloaded = RealmRetriever.from_pretrained(tmp_path)
    assert reloaded.config.separate_query_embedder
    assert torch.equal(reloaded.query_embedder.cls.dense.weight, shared.embedder.cls.dense.weight)


WORKER = """
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from modeling_realm.models.losses import in_batch_loss

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
queries, blocks, negatives = torch.randn(5, 4), torch.randn(5, 4), torch.randn(3, 4)
start, stop = [(0, 3), (3, 5)][rank]  # uneven shares: 3 and 2 pairs
first, last = [(0, 2), (2, 3)][rank]  # and 2 and 1 extra (hard negative) blocks
local_queries = queries[start:stop].clone().requires_grad_()
local_blocks = torch.cat([blocks[start:stop], negatives[first:last]]).clone().requires_grad_()
result = in_batch_loss(local_queries, local_blocks)
result.loss.backward()
save_file({"queries": local_queries.grad, "blocks": local_blocks.grad, "loss": result.loss.detach().reshape(1),
           "candidates": torch.tensor([result.num_candidates])}, f"{sys.argv[1]}/rank{rank}.safetensors")
dist.destroy_process_group()
"""


def test_gather_with_grad_across_two_processes_matches_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    torch.manual_seed(0)
    queries, blocks, negatives = torch.randn(5, 4), torch.randn(5, 4), torch.randn(3, 4)
    # The gathered candidates in rank order: rank 0's 3 blocks and 2 negatives, then rank 1's 2 blocks and 1.
    candidates = torch.cat([blocks[:3], negatives[:2], blocks[3:], negatives[2:]]).requires_grad_()
    queries.requires_grad_()
    # Each process's loss is the mean over its own queries against all 8 candidates; data-parallel training sums the
    # gradients of both losses (then averages over processes), so that sum is the reference.
    labels = [torch.arange(0, 3), torch.arange(5, 7)]  # where each process's own blocks sit among the candidates
    losses = [ict_loss(queries[a:b], candidates, labels[r]) for r, (a, b) in enumerate([(0, 3), (3, 5)])]
    (losses[0] + losses[1]).backward()
    for rank, ((a, b), rows) in enumerate(zip([(0, 3), (3, 5)], [slice(0, 5), slice(5, 8)], strict=True)):
        saved = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert saved["candidates"].item() == 8
        assert saved["loss"].item() == pytest.approx(losses[rank].item(), abs=1e-6)
        torch.testing.assert_close(saved["queries"], queries.grad[a:b], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(saved["blocks"], candidates.grad[rows], atol=1e-6, rtol=1e-5)
