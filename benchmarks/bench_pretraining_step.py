"""Where a REALM pretraining step spends its time, and how long training waits for the index refresh.

    python benchmarks/bench_pretraining_step.py --json pretraining-step.json   # README table (see below for sizes)
    python benchmarks/bench_pretraining_step.py --quick                        # smoke test (well under a minute)

Part 1, the step (issue 6: retrieval <= 10% of a step). One step of `examples/pretrain_realm.py`, the same calls in
the same order, cut into phases timed with `time.perf_counter()` (a batch of masked queries, top-k candidates with
the null block; the masking itself is the data loader's work and is left out):

- (a) query embedding for search: `search_embeddings` (query tower, no gradients, eval mode);
- (b) index search + fetching the candidate blocks: `retrieve_blocks` on a `BlockIndex` (FAISS, then the block
  texts from the memory-mapped Arrow table; the query's own document excluded);
- (c) candidate inputs: `candidate_inputs` (tokenising the blocks for the block tower and the
  `[CLS] query [SEP] block [SEP]` encoder inputs);
- (d) forward + backward: relevance scores from both towers (with gradients) and the knowledge-augmented encoder
  over the k candidates, marginal masked-LM loss, `backward()`;
- (e) optimizer step: gradient clipping, AdamW, `zero_grad`.

"Retrieval" is (a) + (b); a second share adds (c). Medians and means over `--steps` steps after `--warmup-steps`;
the share of a phase is its mean over the mean step (means add up, so the shares sum to 1).

The models are initialised at random (timing only) with the WordPiece vocabulary of the offline demo model
(all-MiniLM-L6-v2, the `demo` extra, 30,522 entries); the query and block towers are separate (REALM;
`--shared-towers` for one). The default keeps REALM's step shape (batch 8 per device as `pretrain_realm.py`, k 8,
queries of 96 wordpieces, blocks of 288, encoder inputs of 512) with a BERT-tiny-shaped model (hidden 128, 2
layers), so that the whole benchmark runs in a few minutes on 2 CPU cores (about 7 s per step with one thread; 11 s
before the masked-LM head ran on the masked positions only, when it produced batch x k x 96 x 30,522 logits); a
BERT-base step (`--hidden-size 768 --layers 12`) at batch 8 was killed at 20 GB of RSS on this 24 GB machine. The
trainer uses `--threads` torch threads (default 1: on a shared 2-core machine two threads oversubscribed the cores
and made steps 1.5-10x slower). The index is `--num-blocks` synthetic 128-d embeddings (`synthetic_embeddings.py`:
clustered unit vectors and ~1.2 KB pseudo-word texts, 4 blocks per document) under `--factory` (default IVF4096,PQ32
with exact re-ranking, the configuration `bench_search.py` recommends), built once and cached in `--work-dir` (about
3 GB at 1M blocks). `--device cuda` trains on a GPU (the index stays on the CPU, as in `pretrain_realm.py`).

On CPU the encoder (d) dominates every step, so the share says little about a GPU, where (d), (e) and (a) shrink by
one to two orders of magnitude while (b) (FAISS on the CPU) and (c) (tokenisation) do not. What carries over is the
absolute time of (b) and (c) per step: the script prints it, and the shortest accelerator step for which (b) stays
within 10% (10 x (b)).

Part 2, the refresh (issue 6: time blocked on the refresh in asynchronous mode, target 0). Training continues with
an `IndexRefresher` over a small on-disk index (`--refresh-blocks`, Flat: every refresh re-encodes all of it with
the block tower, which a large index cannot do in minutes on a CPU), with a refresh due every `--refresh-every`
steps. The time the training loop spends inside `refresher.after_step` is the time it is blocked:

- `async` (REALM): due steps snapshot the block tower (`TowerSnapshot`: copied while the next step computes, saved by a
  background thread; the optimizer step waits for the copy if it is not done: the "optimizer wait" column) and then
  start the worker process (`python -m modeling_realm.pretraining.refresh`) that re-encodes the blocks; every step polls
  `latest.json` and swaps a finished version in. Runs until `--async-swaps` refreshed indexes were swapped in (or
  `--max-refresh-steps` / `--max-refresh-seconds`). The worker shares the 2 cores with training, which slows the steps
  (the "median step" column) without blocking them.
- `sync` (the reference for "blocked"): due steps rebuild the index in the training process
  (`--sync-refreshes` rebuilds).

Calls are grouped by kind: `due` (a refresh falls due: async starts the snapshot, or only marks it pending while
the worker is busy; sync rebuilds), `swap` (a refreshed index was loaded and swapped in) and `poll` (neither).
Since the snapshot and the index load grow with scale (the tower with the model, the index with its blocks), a
third table times them at scale: a BERT-base block tower and the part-1 index.

Prints three markdown tables and, last, one JSON line with every figure (also written to `--json PATH`).
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_embeddings import DEFAULT_WORK_DIR, block_texts, ensure_corpus, markdown_table  # noqa: E402

PHASES = {  # key: label
    "query_embedding": "(a) query embedding for search (no grad)",
    "search_and_fetch": "(b) index search + fetch blocks (FAISS)",
    "candidate_inputs": "(c) candidate inputs (tokenise blocks + queries)",
    "forward_backward": "(d) forward + backward (relevance + encoder)",
    "optimizer": "(e) optimizer step (clip + AdamW + zero_grad)",
}
TOTALS = {
    "retrieval": ("retrieval = (a) + (b)", ("query_embedding", "search_and_fetch")),
    "retrieval_and_inputs": ("retrieval + inputs = (a) + (b) + (c)",
                             ("query_embedding", "search_and_fetch", "candidate_inputs")),
    "step": ("whole step", tuple(PHASES)),
}
STEP_HEADERS = ["phase", "median s", "mean s", "share of step"]
REFRESH_HEADERS = ["mode", "steps", "refreshes swapped in", "blocked total s", "blocked max s", "max s: due",
                   "max s: swap", "max s: poll", "optimizer wait s", "median step s (excl. refresh)",
                   "mean staleness (steps)", "wall s"]
QUERY_WORDS = 60  # ~1/3 of a block text: more than 96 wordpieces, so every query fills REALM's 96
logger = logging.getLogger("bench_pretraining_step")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model and step")
    model.add_argument("--hidden-size", type=int, default=128, help="768 for BERT-base")
    model.add_argument("--layers", type=int, default=2, help="12 for BERT-base")
    model.add_argument("--shared-towers", action="store_true", help="one tower for queries and blocks")
    model.add_argument("--batch-size", type=int, default=8, help="queries per step (REALM: 512 over 64 TPUs)")
    model.add_argument("--top-k", type=int, default=8, help="candidates per query, the null block included")
    model.add_argument("--query-length", type=int, default=96)
    model.add_argument("--block-length", type=int, default=288)
    model.add_argument("--encoder-length", type=int, default=512)
    model.add_argument("--steps", type=int, default=8, help="timed steps of part 1")
    model.add_argument("--warmup-steps", type=int, default=1)
    model.add_argument("--learning-rate", type=float, default=3e-5)
    index = parser.add_argument_group("index")
    index.add_argument("--num-blocks", type=int, default=1_000_000)
    index.add_argument("--factory", default=None, help="FAISS factory (default IVF4096,PQ32; --quick: Flat)")
    index.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="synthetic corpus and cached indices")
    refresh = parser.add_argument_group("refresh (part 2)")
    refresh.add_argument("--refresh-blocks", type=int, default=256, help="blocks of the refreshed index")
    refresh.add_argument("--refresh-every", type=int, default=2, help="steps between due refreshes")
    refresh.add_argument("--async-swaps", type=int, default=3, help="async: stop after this many swaps")
    refresh.add_argument("--max-refresh-steps", type=int, default=80, help="async: stop after this many steps")
    refresh.add_argument("--max-refresh-seconds", type=float, default=900, help="async: stop after this long")
    refresh.add_argument("--sync-refreshes", type=int, default=2, help="sync: rebuilds to time")
    refresh.add_argument("--refresh-batch-size", type=int, default=64)
    parser.add_argument("--skip-refresh", action="store_true", help="part 1 only")
    parser.add_argument("--device", default="cpu", help="where the models train (the index stays on the CPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the trainer (0: torch's default; two oversubscribe a shared 2-core box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the summary to this JSON file")
    parser.add_argument("--quick", action="store_true", help="tiny model and index (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size, args.layers, args.batch_size, args.top_k = 32, 2, 4, 4
        args.query_length, args.block_length, args.encoder_length = 32, 64, 128
        args.num_blocks, args.steps, args.warmup_steps = 2000, 5, 1
        args.refresh_blocks, args.async_swaps, args.max_refresh_steps, args.sync_refreshes = 1024, 1, 1000, 2
        args.max_refresh_seconds = 120
    args.factory = args.factory or ("Flat" if args.quick else "IVF4096,PQ32")
    check_args(parser, args)
    return args


def check_args(parser, args):
    for name in ("hidden_size", "layers", "batch_size", "steps", "num_blocks", "refresh_blocks", "refresh_every",
                 "async_swaps", "max_refresh_steps", "sync_refreshes", "refresh_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.warmup_steps < 0 or args.threads < 0 or args.top_k < 2:
        parser.error("--warmup-steps and --threads must be >= 0 and --top-k >= 2 (the null block and a retrieved "
                     "block).")
    if args.hidden_size % 64 and args.hidden_size >= 64:
        parser.error(f"--hidden-size {args.hidden_size}: use a multiple of 64 (attention heads of 64).")
    if args.refresh_blocks > args.num_blocks:
        parser.error(f"--refresh-blocks ({args.refresh_blocks}) must not exceed --num-blocks ({args.num_blocks}).")
    if args.query_length + 1 > args.encoder_length:
        parser.error("--query-length must be below --encoder-length.")


# ------------------------------------------------------------------------------------------------ setup
def load_tokenizer():
    from transformers import AutoTokenizer

    from modeling_realm.models.loading import demo_model_path

    return AutoTokenizer.from_pretrained(demo_model_path())


def make_model(args, tokenizer):
    """A randomly initialised `RealmPretrainingModel` (retriever + encoder) in training mode, unused heads frozen."""
    from modeling_realm import RealmConfig, RealmKnowledgeAugEncoder, RealmRetriever
    from modeling_realm.pretraining.realm import RealmPretrainingModel, freeze_unused_parameters

    config = RealmConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                         num_attention_heads=max(1, args.hidden_size // 64), intermediate_size=4 * args.hidden_size,
                         retriever_proj_size=128, max_position_embeddings=max(512, args.encoder_length),
                         separate_query_embedder=not args.shared_towers, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(args.seed)
    model = RealmPretrainingModel(RealmRetriever(config), RealmKnowledgeAugEncoder(config)).to(args.device).train()
    freeze_unused_parameters(model)
    return model


def make_optimizer(model, learning_rate: float):
    """AdamW as in `examples/pretrain_realm.py` (no weight decay on 1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def search_index(args):
    """The `--num-blocks` synthetic BlockIndex under `--factory`, built once into the work directory."""
    import datasets

    from index_builder import BlockIndex

    work_dir = Path(args.work_dir)
    directory = work_dir / f"pretraining-index-{args.num_blocks}-{args.factory.replace(',', '_')}-{args.seed}"
    if directory.is_dir():
        try:
            return BlockIndex.load_from_disk(directory, verify=False)
        except (OSError, ValueError) as error:
            logger.warning("Rebuilding the cached index %s: %s", directory, error)
    paths = ensure_corpus(work_dir, args.num_blocks, args.seed, texts=True)
    started = time.perf_counter()
    blocks = datasets.Dataset.from_file(str(paths["texts"]))
    embeddings = np.load(paths["embeddings"], mmap_mode="r")
    index = BlockIndex.build(blocks, embeddings, directory, factory=args.factory, overwrite=True, progress=False)
    logger.info("Built %s over %d blocks in %.1fs (cached in %s)", args.factory, args.num_blocks,
                time.perf_counter() - started, directory)
    return index


def refresh_source(args, directory: Path):
    """The first `--refresh-blocks` blocks of the corpus as a Flat BlockIndex on disk (version 0 of part 2)."""
    import datasets

    from index_builder import BlockIndex

    paths = ensure_corpus(args.work_dir, args.num_blocks, args.seed, texts=True)
    blocks = datasets.Dataset.from_file(str(paths["texts"])).select(range(args.refresh_blocks))
    embeddings = np.load(paths["embeddings"], mmap_mode="r")[:args.refresh_blocks]
    BlockIndex.build(blocks, embeddings, directory, factory="Flat", overwrite=True, progress=False)
    return directory


class QueryBatches:
    """Masked query batches, one per call: pseudo-word texts cut to ~1/3 of a block (so each fills
    `--query-length`), masked with random tokens (pseudo-words hold no salient spans), doc ids from the first
    `--refresh-blocks` blocks' documents so that the trivial-retrieval exclusion applies in both parts."""

    def __init__(self, args, tokenizer):
        from modeling_realm.pretraining.realm import MaskedQueryCollator

        self.collator = MaskedQueryCollator(tokenizer, "random_token", args.query_length, args.seed)
        self.batch_size, self.documents, self.seed, self.drawn = args.batch_size, max(1, args.refresh_blocks // 4), \
            args.seed, 0

    def __call__(self) -> dict:
        start = self.drawn * self.batch_size
        texts = block_texts(start, start + self.batch_size, seed=self.seed + 1)
        rows = [{"text": " ".join(text.split()[:QUERY_WORDS]), "doc_id": str((start + i) % self.documents),
                 "block_id": start + i} for i, text in enumerate(texts)]
        self.drawn += 1
        return self.collator(rows)


# ------------------------------------------------------------------------------------------------ one step
class Laps:
    """Consecutive `perf_counter` intervals: `lap(name)` records the time since the previous lap (or start), after
    waiting for the accelerator's queued work on `device`."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.times, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[name] = now - self._last
        self._last = now


def timed_step(model, optimizer, tokenizer, batch: dict, retrieve, args) -> dict:
    """One REALM pretraining step as `examples/pretrain_realm.py` runs it; returns seconds per phase."""
    from modeling_realm.pretraining.realm import candidate_inputs, search_embeddings

    laps = Laps(args.device)
    queries = search_embeddings(model.retriever, batch)  # [batch, 128] numpy
    laps.lap("query_embedding")
    retrieved = retrieve(queries, args.top_k - 1, batch["doc_ids"])
    laps.lap("search_and_fetch")
    inputs = candidate_inputs(tokenizer, batch, retrieved.blocks, args.block_length, args.encoder_length)
    inputs = {key: value.to(args.device) for key, value in inputs.items()}
    laps.lap("candidate_inputs")
    loss = model(**inputs).loss
    loss.backward()
    laps.lap("forward_backward")
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad()
    laps.lap("optimizer")
    if not torch.isfinite(loss):
        raise RuntimeError(f"The step's loss is {loss.item()}; the timings would not be of a real step.")
    return laps.times


def measure_step(args, model, optimizer, tokenizer, index, batches: QueryBatches) -> dict:
    """Part 1: phase times over `--steps` steps after `--warmup-steps`."""
    from modeling_realm.retrieval import retrieve_blocks

    def retrieve(queries, num_blocks, doc_ids):
        return retrieve_blocks(index, queries, num_blocks, doc_ids)

    for _ in range(args.warmup_steps):
        timed_step(model, optimizer, tokenizer, batches(), retrieve, args)
    runs = []
    for _ in range(args.steps):
        batch = batches()  # the data loader's work, not the step's
        runs.append(timed_step(model, optimizer, tokenizer, batch, retrieve, args))
    return summarise_phases(runs)


def summarise_phases(runs: list[dict]) -> dict:
    """Per phase and per total: median, mean and share (mean over the mean step) of the seconds per step."""
    per_step = {key: [run[key] for run in runs] for key in PHASES}
    for key, (_, parts) in TOTALS.items():
        per_step[key] = [sum(run[p] for p in parts) for run in runs]
    step_mean = statistics.fmean(per_step["step"])
    return {key: {"median_s": statistics.median(values), "mean_s": statistics.fmean(values),
                  "share": statistics.fmean(values) / step_mean, "per_step_s": values}
            for key, values in per_step.items()}


# ------------------------------------------------------------------------------------------------ refresh
def refresh_run(args, mode: str, model, optimizer, tokenizer, source: Path, work_dir: Path,
                batches: QueryBatches) -> dict:
    """Part 2: train with an `IndexRefresher` in `mode`, timing every `after_step` call (the blocked time)."""
    from index_builder import BlockIndex
    from modeling_realm import IndexRefresher

    refresher = IndexRefresher(BlockIndex.load_from_disk(source, verify=False), model.retriever, tokenizer, work_dir,
                               mode=mode, every=args.refresh_every, block_length=args.block_length,
                               batch_size=args.refresh_batch_size, device=args.device,
                               optimizer=optimizer if mode == "async" else None)
    max_steps = args.max_refresh_steps if mode == "async" else args.sync_refreshes * args.refresh_every
    calls, step_seconds, staleness, started = [], [], [], time.perf_counter()
    try:
        for step in range(1, max_steps + 1):
            begun = time.perf_counter()
            timed_step(model, optimizer, tokenizer, batches(), refresher.retrieve, args)
            step_seconds.append(time.perf_counter() - begun)
            staleness.append(refresher.staleness(step - 1))  # the index this step retrieved from
            begun = time.perf_counter()
            changed = refresher.after_step(step)
            blocked = time.perf_counter() - begun
            kind = "due" if step % args.refresh_every == 0 else "swap" if changed else "poll"
            calls.append({"step": step, "kind": kind, "changed": bool(changed), "seconds": blocked})
            if mode == "async" and (refresher.refreshes >= args.async_swaps or refresher.failures
                                    or time.perf_counter() - started > args.max_refresh_seconds):
                break
    finally:
        refresher.close()
    return summarise_refresh(mode, calls, step_seconds, staleness, refresher, time.perf_counter() - started)


def summarise_refresh(mode, calls, step_seconds, staleness, refresher, wall) -> dict:
    seconds = [call["seconds"] for call in calls]
    by_kind = {}
    for kind in ("due", "swap", "poll"):
        chosen = [call["seconds"] for call in calls if call["kind"] == kind]
        by_kind[kind] = {"calls": len(chosen), "max_s": max(chosen, default=0.0), "total_s": sum(chosen)}
    # Blocked: inside after_step, plus optimizer steps that waited for the block tower's copy (async).
    return {"mode": mode, "steps": len(calls), "refreshes": refresher.refreshes, "failures": refresher.failures,
            "blocked_total_s": sum(seconds) + refresher.wait_seconds, "blocked_max_s": max(seconds, default=0.0),
            "optimizer_wait_s": refresher.wait_seconds, "by_kind": by_kind,
            "median_step_s": statistics.median(step_seconds), "mean_staleness": statistics.fmean(staleness),
            "wall_s": wall, "calls": calls}


def scale_costs(args, tokenizer, index_directory: Path, scratch: Path) -> dict:
    """What the async calls cost at scale: a due call snapshots the block tower (here BERT-base shaped, as
    `IndexRefresher` does with an optimizer: `TowerSnapshot` copies the weights and saves them with the tokenizer in
    a background thread; the trainer waits only in the constructor, and in the next optimizer step for whatever is
    left of the copy) and a swap loads the refreshed index from disk (here the part-1 index, whose files the page
    cache may still hold)."""
    from index_builder import BlockIndex
    from modeling_realm import RealmConfig, RealmEmbedder
    from modeling_realm.pretraining.tower_snapshot import TowerSnapshot, copy_state

    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64} \
        if args.quick else {}  # RealmConfig's defaults are BERT-base
    torch.manual_seed(args.seed)
    tower = RealmEmbedder(RealmConfig(vocab_size=len(tokenizer), **shape))
    started = time.perf_counter()
    copy_state(tower)
    copy_s = time.perf_counter() - started
    started = time.perf_counter()
    snapshot = TowerSnapshot(tower, tokenizer, scratch / "tower", copy_now=False)
    start_s = time.perf_counter() - started
    snapshot.join()
    if snapshot.error is not None:
        raise snapshot.error
    save_s = time.perf_counter() - started
    started = time.perf_counter()
    index = BlockIndex.load_from_disk(index_directory, verify=False)
    load_s = time.perf_counter() - started
    return {"tower_parameters": sum(p.numel() for p in tower.parameters()), "tower_hidden": tower.config.hidden_size,
            "tower_layers": tower.config.num_hidden_layers, "start_snapshot_s": start_s, "copy_tower_s": copy_s,
            "save_tower_s": save_s, "index_blocks": len(index),
            "index_factory": index.factory, "load_index_s": load_s}


# ------------------------------------------------------------------------------------------------ report
def step_table(phases: dict) -> str:
    rows = [[label, phases[key]["median_s"], phases[key]["mean_s"], f"{100 * phases[key]['share']:.1f}%"]
            for key, label in PHASES.items()]
    rows += [[f"**{label}**", phases[key]["median_s"], phases[key]["mean_s"], f"{100 * phases[key]['share']:.1f}%"]
             for key, (label, _) in TOTALS.items()]
    return markdown_table(STEP_HEADERS, rows)


def refresh_table(runs: list[dict]) -> str:
    rows = [[r["mode"], r["steps"], r["refreshes"], r["blocked_total_s"], r["blocked_max_s"],
             r["by_kind"]["due"]["max_s"], r["by_kind"]["swap"]["max_s"], r["by_kind"]["poll"]["max_s"],
             r["optimizer_wait_s"], r["median_step_s"], r["mean_staleness"], r["wall_s"]] for r in runs]
    return markdown_table(REFRESH_HEADERS, rows)


def scale_table(costs: dict) -> str:
    tower = (f"hidden {costs['tower_hidden']}, {costs['tower_layers']} layers, {costs['tower_parameters'] / 1e6:.1f}M "
             "parameters")
    rows = [[f"due: start the block tower snapshot ({tower}) - blocks", costs["start_snapshot_s"]],
            ["background: copy the weights - the next optimizer step waits for what is left", costs["copy_tower_s"]],
            ["background: copy + save weights and tokenizer - never waited for", costs["save_tower_s"]],
            [f"swap: load the refreshed index ({costs['index_blocks']:,} blocks, {costs['index_factory']}) - "
             "background with one process, blocks with several",
             costs["load_index_s"]]]
    return markdown_table(["async call at scale", "s"], rows)


def retrieval_lines(phases: dict) -> list[str]:
    search, inputs = phases["search_and_fetch"]["median_s"], phases["candidate_inputs"]["median_s"]
    retrieval = phases["retrieval"]["median_s"]
    return [f"retrieval per step (median): {retrieval:.4f} s = (a) {phases['query_embedding']['median_s']:.4f} s "
            f"+ (b) {search:.4f} s; (c) inputs {inputs:.4f} s; share of this CPU step "
            f"{100 * phases['retrieval']['share']:.1f}% (target <= 10%), with (c) "
            f"{100 * phases['retrieval_and_inputs']['share']:.1f}%.",
            f"on an accelerator (a), (d), (e) shrink but (b) and (c) stay on the CPU: (b) is <= 10% of any step of "
            f"at least {10 * search:.3f} s, (b) + (c) of any step of at least {10 * (search + inputs):.3f} s."]


def header(args, index) -> str:
    towers = "shared tower" if args.shared_towers else "separate query/block towers"
    return (f"# pretraining step: batch {args.batch_size}, k {args.top_k} (null block included), queries "
            f"{args.query_length}, blocks {args.block_length}, encoder {args.encoder_length}; random-init REALM "
            f"hidden {args.hidden_size}, {args.layers} layers, {towers}; index {len(index):,} blocks "
            f"{args.factory} {dict(index.manifest.search_params)}; {args.steps} steps after {args.warmup_steps} "
            f"warm-up; training on {args.device}; {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"(trainer threads: {torch.get_num_threads()})")


def run(args, scratch: Path) -> dict:
    tokenizer = load_tokenizer()
    model = make_model(args, tokenizer)
    optimizer = make_optimizer(model, args.learning_rate)
    batches = QueryBatches(args, tokenizer)
    index = search_index(args)
    print(header(args, index), flush=True)
    started = time.perf_counter()
    phases = measure_step(args, model, optimizer, tokenizer, index, batches)
    summary = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "num_blocks": len(index),
               "search_params": dict(index.manifest.search_params), "phases": phases,
               "part1_wall_s": time.perf_counter() - started, "refresh": [], "scale": None}
    print(step_table(phases))
    print("\n".join(retrieval_lines(phases)), flush=True)
    if args.skip_refresh:
        return summary
    index_directory = index.directory
    del index
    source = refresh_source(args, scratch / "refresh-v0")
    for mode in ("sync", "async"):
        summary["refresh"].append(refresh_run(args, mode, model, optimizer, tokenizer, source,
                                              scratch / f"versions-{mode}", batches))
    summary["scale"] = scale_costs(args, tokenizer, index_directory, scratch)
    print(f"\n# refresh: {args.refresh_blocks} blocks (Flat), a refresh due every {args.refresh_every} steps; "
          "blocked = seconds inside refresher.after_step", flush=True)
    print(refresh_table(summary["refresh"]))
    print()
    print(scale_table(summary["scale"]))
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="pretraining-step-", dir=args.work_dir))
    try:
        summary = run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        temporary = Path(f"{args.json}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(temporary, args.json)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
