"""RealmForOpenQA over a batch of questions: 4.57.6 parity (it took one question at a time) and batch invariance."""

import pytest
import torch
from torch.nn import functional as F

from modeling_realm import RealmForOpenQA
from tests.helpers import PARITY, assert_close, load_io, perturb_, tiny_config


def pad(tensor, length, value):
    return F.pad(tensor, (0, length - tensor.shape[-1]), value=value)


def fixture_questions(config_name):
    """The three questions 4.x answered one by one, with the blocks and reader inputs it used."""
    directory = PARITY / config_name / "RealmForOpenQA"
    return [load_io(directory, prefix=f"q{q}.") for q in range(3)]


def batch_of(cases):
    """Stack per-question 4.x inputs into one batch, padding questions, reader inputs and answers."""
    q_len = max(inputs["input_ids"].shape[-1] for inputs, _ in cases)
    r_len = max(inputs["reader_input_ids"].shape[-1] for inputs, _ in cases)
    n_answers = max(inputs["start_positions"].shape[-1] for inputs, _ in cases)

    def rows(name, length, value):
        return torch.stack([pad(inputs[name], length, value) for inputs, _ in cases])

    block_masks = [(~inputs["special_tokens_mask"].bool()) & inputs["reader_token_type_ids"].bool()
                   for inputs, _ in cases]
    return dict(
        input_ids=rows("input_ids", q_len, 0).squeeze(1), attention_mask=rows("attention_mask", q_len, 0).squeeze(1),
        token_type_ids=rows("token_type_ids", q_len, 0).squeeze(1),
        block_ids=torch.stack([inputs["block_ids"] for inputs, _ in cases]),
        reader_input_ids=rows("reader_input_ids", r_len, 0),
        reader_attention_mask=rows("reader_attention_mask", r_len, 0),
        reader_token_type_ids=rows("reader_token_type_ids", r_len, 0),
        block_mask=torch.stack([pad(mask, r_len, False) for mask in block_masks]),
        has_answers=torch.stack([inputs["has_answers"] for inputs, _ in cases]),
        start_positions=rows("start_positions", n_answers, -1), end_positions=rows("end_positions", n_answers, -1),
    )


@pytest.mark.parametrize("config_name", ["tiny", "google"])
def test_batched_forward_equals_4x_one_question_at_a_time(config_name):
    model = RealmForOpenQA.from_pretrained(PARITY / config_name / "RealmForOpenQA").eval()
    cases = fixture_questions(config_name)
    with torch.no_grad():
        out = model(**batch_of(cases))
    for i, (inputs, expected) in enumerate(cases):
        assert out.block_idx[i] == expected["block_idx"]
        assert out.start_pos[i] == expected["start_pos"].item()
        assert out.end_pos[i] == expected["end_pos"].item()
        assert out.block_ids[i] == inputs["block_ids"][expected["block_idx"]]
        assert out.predicted_answer_ids[i].tolist() == expected["predicted_answer_ids"].tolist()
        assert_close(out.retriever_loss[i], expected["retriever_loss"], what="retriever_loss")
        assert_close(out.reader_loss[i], expected["reader_loss"], what="reader_loss")
    expected_total = torch.stack([e["loss"] for _, e in cases]).mean()
    assert_close(out.loss, expected_total, what="loss")


def test_answer_is_the_same_alone_or_in_a_batch():
    model = RealmForOpenQA.from_pretrained(PARITY / "tiny" / "RealmForOpenQA").eval()
    cases = fixture_questions("tiny")
    with torch.no_grad():
        batched = model(**batch_of(cases))
        for i in range(len(cases)):
            alone = model(**batch_of(cases[i:i + 1]))
            assert alone.block_idx[0] == batched.block_idx[i]
            assert alone.start_pos[0] == batched.start_pos[i] and alone.end_pos[0] == batched.end_pos[i]
            assert_close(alone.relevance_score[0], batched.relevance_score[i], what="relevance")
            assert_close(alone.loss, batched.reader_loss[i] + batched.retriever_loss[i], what="loss")


def test_block_embeddings_given_directly_match_block_ids():
    model = RealmForOpenQA.from_pretrained(PARITY / "tiny" / "RealmForOpenQA").eval()
    batch = batch_of(fixture_questions("tiny"))
    embeddings = model.lookup_block_embeddings(batch["block_ids"])
    assert embeddings.shape == (*batch["block_ids"].shape, model.config.retriever_proj_size)
    with torch.no_grad():
        by_ids = model(**batch)
        by_embeddings = model(**{**batch, "block_ids": None, "block_embeddings": embeddings})
    assert_close(by_embeddings.reader_logits, by_ids.reader_logits, what="reader logits")
    assert by_embeddings.block_ids is None


def test_training_loss_reaches_question_tower_and_reader():
    model = RealmForOpenQA.from_pretrained(PARITY / "tiny" / "RealmForOpenQA").train()
    out = model(**batch_of(fixture_questions("tiny")))
    out.loss.backward()
    assert model.embedder.cls.dense.weight.grad.abs().sum() > 0
    assert model.reader.qa_outputs.dense_output.weight.grad.abs().sum() > 0
    assert model.block_emb.grad is None  # block embeddings stay frozen (a buffer)


def test_searcher_beam_size_depends_on_mode():
    model = RealmForOpenQA(tiny_config())
    assert model.train().searcher_beam_size == model.config.searcher_beam_size
    assert model.eval().searcher_beam_size == model.config.reader_beam_size


def test_bad_block_ids_and_missing_inputs_are_named():
    model = perturb_(RealmForOpenQA(tiny_config())).eval()
    batch = batch_of(fixture_questions("tiny"))
    with pytest.raises(ValueError, match=r"block_ids must lie in \[0, 6\)"):
        model(**{**batch, "block_ids": batch["block_ids"] + 100})
    with pytest.raises(ValueError, match="pass block_ids or block_embeddings"):
        model(**{**batch, "block_ids": None})
    with pytest.raises(ValueError, match="reader_input_ids must have shape"):
        model(**{**batch, "reader_input_ids": batch["reader_input_ids"][0]})
    short = {k: batch[k][..., :2] for k in ("reader_input_ids", "reader_attention_mask", "reader_token_type_ids",
                                             "block_mask")}
    with pytest.raises(ValueError, match="fewer than config.max_span_width=3"):
        model(**{**batch, **short})


def test_block_emb_of_a_legacy_checkpoint_is_not_copied_into_memory(tmp_path):
    """google's block_emb is 6.8 GB: loading keeps it memory-mapped and a lookup reads only the rows it needs."""
    psutil = pytest.importorskip("psutil")
    rows = 400_000  # 205 MB of float32 at 128-d
    config = tiny_config(retriever_proj_size=128, num_block_records=rows)
    state = RealmForOpenQA(config).state_dict()
    state["block_emb"] = torch.randn(rows, 128)
    expected = state["block_emb"][[7, rows - 1]].clone()
    torch.save(state, tmp_path / "pytorch_model.bin")
    config.architectures = ["RealmForOpenQA"]
    config.save_pretrained(tmp_path)
    del state
    process = psutil.Process()
    before = process.memory_info().rss
    model = RealmForOpenQA.from_pretrained(tmp_path)
    looked_up = model.lookup_block_embeddings(torch.tensor([[7, rows - 1]]))
    grown = (process.memory_info().rss - before) / 2**20
    assert torch.equal(looked_up[0], expected)
    assert grown < 100, f"loading grew the process by {grown:.0f} MiB for a 195 MiB block_emb"


def test_block_embedding_to_moves_only_the_block_embeddings():
    """transformers 4.x's `block_embedding_to`: block_emb alone goes to another device (here the meta device stands
    in for a second one); the towers stay, and the buffer keeps its state-dict name."""
    model = RealmForOpenQA(tiny_config())
    assert model.block_embedding_to("meta") is model
    assert model.block_emb.device.type == "meta" and model.embedder.realm.embeddings.word_embeddings.weight.is_cpu
    assert "block_emb" in dict(model.named_buffers())
