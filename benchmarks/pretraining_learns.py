"""Does REALM pretraining learn? A tiny BERT trained from scratch on a synthetic knowledge corpus.

    python benchmarks/pretraining_learns.py --output-dir /tmp/pretraining-learns   # README table (~30 min, 1 core)
    python benchmarks/pretraining_learns.py --quick                                  # smoke test (seconds)

The corpus is made here: one biography per invented person (`modeling_realm.apps.synthetic`: names, cities, years and
professions made up from syllables), one block each. The pretraining queries are sentences stating one person's
facts, in a document of their own that is not in the index, with one fact masked as the salient span
(`--queries verbatim`: the biography's first sentence; `restated`: other words), so the masked word can only come
from the person's biography: no model can know invented facts. A quarter of the people are held out: their
biographies are in the index but their queries never train, so predicting their facts needs retrieval and reading,
not memorised weights.

The tokenizer is word-level (every word of the corpus one wordpiece); the retriever (one tower shared by queries and
blocks, `--towers shared`) and the knowledge-augmented encoder are tiny BERTs initialised at random. What makes this
tiny setting learn (each measured; see benchmarks/README.md):
- a shared tower: every invented name is a word of its own, and with separate towers each name's embedding must be
  aligned across two tables by gradient (ICT recall@1 0.20 after 500 steps of 32 with 100 people, against 1.00 with
  one shared tower);
- 1,000 people, so that each trained query comes back only a few times (about 6 in 800 steps of 16) and the encoder
  cannot memorise facts: reading them from the retrieved biography is the cheaper way to lower the loss;
- ICT with 128 in-batch negatives and the query sentence left in its block half the time (`--ict-keep-prob`): with
  32 negatives and ORQA's 0.1, recall@1 over 1,000 blocks peaked near 0.8 and then fell;
- a 10x lower learning rate for the retriever than for the encoder in the REALM steps: until the encoder reads, the
  retriever's gradient is noise that Adam scales to full-size steps, and at one learning rate recall@1 fell from 0.98
  to 0.00 before the encoder learnt to copy.

Rows, from the same initial weights:

- `initialisation`;
- `ICT warm start only`: the retriever after `--ict-steps` of the Inverse Cloze Task (`modeling_realm.pretraining.ict`);
- `ICT + REALM`: then `--steps` of the package's REALM step (`modeling_realm.pretraining.realm`: null block, relevance
  recomputed with gradients to both towers, marginal masked-LM loss) with the index refreshed synchronously every
  `--refresh-every` steps by `IndexRefresher`;
- `ICT + REALM, refresh disabled`: the index keeps the ICT block tower's embeddings;
- `ICT + REALM, fixed random blocks`: retrieval replaced by the same random blocks (never the person's) per query;
- `no ICT warm start`: REALM from the random retriever.

Measured on the held-out people's queries and on the trained ones: retrieval recall@1 (the top block of an index
rebuilt with the row's block tower is the person's biography; chance is 1/people) and masked fact accuracy (the masked
word is the argmax of the marginal p(y|x) = sum_z p(z|x) p(y|z, x) over the top-k blocks and the null block). Prints
a table and one JSON summary (also --output-dir/summary.json).
"""

import argparse
import copy
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_builder import BlockIndex  # noqa: E402
from modeling_realm import (  # noqa: E402
    IndexRefresher,
    RealmConfig,
    RealmKnowledgeAugEncoder,
    RealmRetriever,
    RetrievedBlocks,
    retrieve_blocks,
)
from modeling_realm.apps.synthetic import documents, invent_people  # noqa: E402
from modeling_realm.models import evaluation_mode  # noqa: E402
from modeling_realm.pretraining import (  # noqa: E402
    IctCollator,
    MaskedQueryCollator,
    RealmPretrainingModel,
    can_make_ict_example,
    embed_blocks_now,
    freeze_unused_parameters,
    in_batch_loss,
    pretraining_inputs,
)
from tokenization import RealmTokenizerFast  # noqa: E402

VARIANTS = ("REALM", "refresh disabled", "fixed random blocks", "no ICT warm start")
QUERY_TEMPLATES = {  # per style, the sentence stating a person's facts, and the facts masked one at a time
    # the biography's first sentence itself (in another document): retrieval matches it word for word
    "verbatim": ("{name} was a {profession} born in {city} in {year} .", ("city", "profession", "year")),
    # the same facts in words the biographies never use
    "restated": ("the birthplace of {name} is {city} ; {name} worked as a {profession} from the year {year} .",
                 ("city", "profession", "year")),
}
BLOCK_LENGTH, QUERY_LENGTH, ENCODER_LENGTH = 64, 24, 96
SETTINGS = ("people", "towers", "ict_steps", "ict_batch_size", "ict_keep_prob", "steps", "batch_size", "top_k",
            "refresh_every", "hidden_size", "layers", "learning_rate", "retriever_learning_rate", "seed")
logger = logging.getLogger("pretraining_learns")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None, help="summary.json and index versions (default: a temp dir)")
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--queries", choices=sorted(QUERY_TEMPLATES), default="verbatim",
                        help="query sentences: the biography's own words, or restated")
    parser.add_argument("--name-pool", type=int, default=0, help="first/last names from pools of N words (0: unique)")
    parser.add_argument("--held-out", type=float, default=0.25, help="share of people whose queries never train")
    parser.add_argument("--towers", choices=("shared", "separate"), default="shared",
                        help="one retriever tower for queries and blocks, or separate query and block towers")
    parser.add_argument("--ict-steps", type=int, default=500, help="ICT warm start of the retriever")
    parser.add_argument("--ict-batch-size", type=int, default=128, help="ICT blocks per step (in-batch negatives)")
    parser.add_argument("--ict-keep-prob", type=float, default=0.5,
                        help="ICT: probability that the query sentence stays in its block")
    parser.add_argument("--steps", type=int, default=800, help="REALM pretraining steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=8, help="candidates per query, the null block included")
    parser.add_argument("--refresh-every", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--retriever-learning-rate", type=float, default=1e-4,
                        help="the retriever's learning rate in the REALM steps (ICT uses --learning-rate)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-eval-queries", type=int, default=1500, help="per split")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.people, args.ict_steps, args.steps, args.refresh_every = 24, 4, 12, 4
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}.")
    if not 0 < args.held_out < 1 or args.people < 8 or args.top_k < 2:
        parser.error("need 0 < --held-out < 1, --people >= 8 and --top-k >= 2.")
    return args


# ------------------------------------------------------------------------------------------------ the world
def make_queries(people, indices, style: str = "verbatim") -> list[dict]:
    """Masked-fact queries of the given people: `text`, `doc_id` (a query document, never indexed), `person`,
    `salient_spans` (the fact's character span, the one span masked) and `block_id` (for seeded masking)."""
    template, attributes = QUERY_TEMPLATES[style]
    rows = []
    for i in indices:
        person = people[i]
        for t, attribute in enumerate(attributes):
            marker = "\x00"
            values = {name: str(getattr(person, name)).lower() for name in ("name", "profession", "city", "year")}
            text = template.format(**{**values, attribute: marker})
            start = text.index(marker)
            text = text.replace(marker, values[attribute])
            rows.append({"text": text, "doc_id": f"query-{i}-{t}", "person": i,
                         "salient_spans": [[start, start + len(values[attribute])]], "block_id": len(rows)})
    return rows


def word_tokenizer(texts: list[str], directory: Path) -> RealmTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is every word of `texts`, so each word is one wordpiece."""
    vocab = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    path = directory / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocab]) + "\n")
    return RealmTokenizerFast(vocab_file=str(path))


def share_name_words(people, pool: int, seed: int) -> None:
    """Rename people so that first and last names come from pools of `pool` words (each full name still unique):
    a fact is then tied to a pair of common words rather than to one unique word (harder to memorise, and to
    retrieve)."""
    words = sorted({word for person in people for word in person.name.split()})
    if pool * pool < len(people) or 2 * pool > len(words):
        raise ValueError(f"--name-pool {pool} cannot name {len(people)} people uniquely from {len(words)} words.")
    rng = np.random.default_rng(seed)
    firsts, lasts = words[:pool], words[pool:2 * pool]
    pairs = rng.choice(pool * pool, size=len(people), replace=False)
    for person, pair in zip(people, pairs, strict=True):
        person.name = f"{firsts[pair // pool]} {lasts[pair % pool]}"
    for person in people:
        person.teacher = None  # teachers named the old names


def make_world(args, directory: Path) -> dict:
    people = invent_people(args.people, seed=args.seed)
    if args.name_pool:
        share_name_words(people, args.name_pool, args.seed)
    docs = documents(people)  # doc_id str(i): person i's biography, one block each
    order = np.random.default_rng(args.seed).permutation(len(people))
    held_out = sorted(order[:max(1, round(args.held_out * len(people)))].tolist())
    trained = sorted(set(range(len(people))) - set(held_out))
    queries = {split: make_queries(people, indices, args.queries)
               for split, indices in (("trained", trained), ("held_out", held_out))}
    texts = [d["title"] + " " + d["text"] for d in docs] + [q["text"] for rows in queries.values() for q in rows]
    tokenizer = word_tokenizer(texts, directory)
    blocks = [{"block_id": i, "doc_id": d["doc_id"], "title": d["title"], "text": d["text"]}
              for i, d in enumerate(docs)]
    return {"people": people, "blocks": blocks, "queries": queries, "tokenizer": tokenizer}


def fresh_models(args, tokenizer):
    config = RealmConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                         num_attention_heads=4, intermediate_size=4 * args.hidden_size,
                         retriever_proj_size=args.hidden_size, max_position_embeddings=128,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         separate_query_embedder=args.towers == "separate",
                         initializer_range=0.1)  # at BERT's 0.02 a tiny random tower gives nearly the same [CLS] output
                                                 # for every input, so ICT starts with no signal
    torch.manual_seed(args.seed)
    return RealmRetriever(config), RealmKnowledgeAugEncoder(config)


def fresh_index(retriever, world) -> BlockIndex:
    """A Flat index of every block embedded by the current block tower."""
    blocks = world["blocks"]
    embeddings = embed_blocks_now(retriever, world["tokenizer"], blocks, BLOCK_LENGTH).cpu().numpy()
    return BlockIndex.from_arrays(embeddings, [b["text"] for b in blocks], titles=[b["title"] for b in blocks],
                                  doc_ids=[b["doc_id"] for b in blocks], progress=False)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(model, world, rows, top_k: int, seed: int) -> dict:
    """Recall@1 of the person's biography and masked fact accuracy, with an index of the current block tower."""
    tokenizer, index = world["tokenizer"], fresh_index(model.retriever, world)
    collator = MaskedQueryCollator(tokenizer, "salient", query_length=QUERY_LENGTH, seed=seed)
    hits, correct = 0, 0
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            batch = collator(chunk)
            retrieve = lambda q, n, d: retrieve_blocks(index, q, n, d)  # noqa: E731
            inputs, retrieved = pretraining_inputs(model.retriever, tokenizer, batch, retrieve, top_k, BLOCK_LENGTH,
                                                   ENCODER_LENGTH)
            people = np.asarray([row["person"] for row in chunk])
            hits += int((retrieved.block_ids[:, 0] == people).sum())  # block i is person i's biography
            correct += int(marginal_predictions_correct(model, inputs).sum())
    return {"recall@1": hits / len(rows), "masked accuracy": correct / len(rows)}


def marginal_predictions_correct(model, inputs: dict) -> torch.Tensor:
    """`[batch]` bool: every masked word is the argmax of sum_z p(z|x) p(y|z, x)."""
    output = model(**inputs)
    batch, k, seq = inputs["input_ids"].shape
    logits = model.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           token_type_ids=inputs["token_type_ids"]).logits.view(batch, k, seq, -1)
    # [batch, k, 1, 1] + [batch, k, seq, vocab] -> [batch, seq, vocab]
    marginal = torch.logsumexp(output.relevance_score.log_softmax(-1)[:, :, None, None] + logits.log_softmax(-1), 1)
    predicted = marginal.argmax(-1)  # [batch, seq]
    mask = inputs["mlm_mask"]  # [batch, seq]
    return ((predicted == inputs["labels"]) | ~mask).all(-1) & mask.any(-1)


# ------------------------------------------------------------------------------------------------ training
def random_block_retriever(world, num_blocks: int, seed: int):
    """Retrieval replaced by fixed random blocks per query (never the query's person)."""
    blocks, rng = world["blocks"], np.random.default_rng(seed)
    choices = {}
    for row in world["queries"]["trained"] + world["queries"]["held_out"]:
        others = [b for b in range(len(blocks)) if b != row["person"]]
        choices[row["doc_id"]] = rng.choice(others, size=num_blocks, replace=False)

    def retrieve(query_embeddings, n, doc_ids):
        ids = np.stack([choices[d][:n] for d in doc_ids])  # [batch, n]
        return RetrievedBlocks(ids, np.zeros(ids.shape, np.float32), [[blocks[b] for b in row] for row in ids])

    return retrieve


def ict_warm_start(args, world, retriever) -> list[float]:
    """The Inverse Cloze Task on the biographies (a sentence finds its biography among the batch's), in place."""
    rows = [b for b in world["blocks"] if can_make_ict_example(b["text"])]
    collator = IctCollator(world["tokenizer"], query_length=QUERY_LENGTH, block_length=BLOCK_LENGTH,
                            keep_prob=args.ict_keep_prob, seed=args.seed)
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=args.learning_rate)
    rng, losses = np.random.default_rng(args.seed), []
    retriever.train()
    for step in range(1, args.ict_steps + 1):
        collator.set_epoch(step)
        chosen = rng.choice(len(rows), size=min(args.ict_batch_size, len(rows)), replace=False)
        batch = collator([rows[i] for i in chosen])
        # [batch, proj] each
        queries = retriever.embed_queries(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        blocks = retriever.embed_blocks(batch["block_input_ids"], batch["block_attention_mask"],
                                        batch["block_token_type_ids"])
        loss = in_batch_loss(queries, blocks).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    logger.info("ICT: loss %.3f -> %.3f over %d steps", np.mean(losses[:20]), np.mean(losses[-20:]), args.ict_steps)
    return losses


def train(args, world, variant: str, retriever, encoder, work_dir: Path) -> list[float]:
    """REALM pretraining of `retriever` and `encoder` in place, as `variant` says; returns the losses."""
    model = RealmPretrainingModel(retriever, encoder).train()
    freeze_unused_parameters(model)
    mode = "none" if variant == "refresh disabled" else "sync"
    refresher = IndexRefresher(fresh_index(retriever, world), retriever, world["tokenizer"], work_dir, mode=mode,
                               every=args.refresh_every, block_length=BLOCK_LENGTH)
    retrieve = random_block_retriever(world, args.top_k - 1, args.seed) if variant == "fixed random blocks" else \
        refresher.retrieve
    collator = MaskedQueryCollator(world["tokenizer"], "salient", query_length=QUERY_LENGTH, seed=args.seed)
    # the retriever learns 10x slower: until the encoder reads, its gradient is noise that Adam scales to full steps
    optimizer = torch.optim.AdamW([
        {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": args.learning_rate},
        {"params": [p for p in retriever.parameters() if p.requires_grad], "lr": args.retriever_learning_rate}])
    rows, rng, losses, hits = world["queries"]["trained"], np.random.default_rng(args.seed), [], []
    for step in range(1, args.steps + 1):
        collator.set_epoch(step)
        batch_rows = [rows[i] for i in rng.choice(len(rows), size=args.batch_size, replace=False)]
        batch = collator(batch_rows)
        inputs, retrieved = pretraining_inputs(retriever, world["tokenizer"], batch, retrieve, args.top_k,
                                               BLOCK_LENGTH, ENCODER_LENGTH)
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        refresher.after_step(step)
        losses.append(loss.item())
        hits.append(np.mean(retrieved.block_ids[:, 0] == np.asarray([row["person"] for row in batch_rows])))
        if step % 100 == 0:
            logger.info("%s step %d: loss %.3f, top block the person's %.2f", variant, step,
                        np.mean(losses[-100:]), np.mean(hits[-100:]))
    refresher.close()
    logger.info("%s: loss %.3f -> %.3f over %d steps, %d refreshes", variant, np.mean(losses[:20]),
                np.mean(losses[-20:]), args.steps, refresher.refreshes)
    return losses


# ------------------------------------------------------------------------------------------------ report
def measure(model, world, args) -> dict:
    """Both metrics on the held-out and the trained queries (the first --max-eval-queries of each)."""
    return {split: evaluate(model, world, rows[:args.max_eval_queries], args.top_k, args.seed)
            for split, rows in world["queries"].items()}


def table(results: dict) -> str:
    header = ("model", "held-out recall@1", "held-out masked acc", "trained recall@1", "trained masked acc",
              "final loss", "seconds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [name, r["held_out"]["recall@1"], r["held_out"]["masked accuracy"], r["trained"]["recall@1"],
                 r["trained"]["masked accuracy"], r.get("final_loss", "-"), r.get("seconds", "-")]
        lines.append("| " + " | ".join(c if isinstance(c, str) else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def run(args, directory: Path) -> dict:
    world = make_world(args, directory)
    retriever, encoder = fresh_models(args, world["tokenizer"])
    results = {"initialisation": measure(RealmPretrainingModel(retriever, encoder), world, args)}
    started = time.perf_counter()
    warm = copy.deepcopy(retriever)
    ict_losses = ict_warm_start(args, world, warm)
    results["ICT warm start only"] = {**measure(RealmPretrainingModel(warm, encoder), world, args),
                                      "final_loss": float(np.mean(ict_losses[-20:])),
                                      "seconds": time.perf_counter() - started}
    for variant in args.variants:
        started = time.perf_counter()
        start = retriever if variant == "no ICT warm start" else warm
        model = RealmPretrainingModel(copy.deepcopy(start), copy.deepcopy(encoder))
        losses = train(args, world, variant, model.retriever, model.encoder, directory / variant.replace(" ", "_"))
        name = variant if variant == "no ICT warm start" else f"ICT + {variant}" if variant == "REALM" else \
            f"ICT + REALM, {variant}"
        results[name] = {**measure(model, world, args), "final_loss": float(np.mean(losses[-20:])),
                         "seconds": time.perf_counter() - started}
    return {"people": args.people, "blocks": len(world["blocks"]), "chance recall@1": 1 / args.people,
            "queries": {k: len(v) for k, v in world["queries"].items()},
            "settings": {k: getattr(args, k) for k in SETTINGS},
            "results": results}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.output_dir or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        summary = run(args, directory)
        if args.output_dir:
            (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table(summary["results"]))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
