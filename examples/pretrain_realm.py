"""REALM pretraining (Guu et al. 2020) under accelerate: salient-span masked LM, marginalised over retrieved blocks.

    accelerate launch examples/pretrain_realm.py --index INDEX_DIR --retriever out/ict/final \\
        --encoder bert-base-uncased --output-dir out/realm

Also runs as `python examples/pretrain_realm.py ...` (one process) or `torchrun --nproc_per_node N
examples/pretrain_realm.py ... --cpu` (several CPU processes need `--cpu`). Several GPUs or machines:
`accelerate launch --config_file CONFIG ...` (mixed precision and accumulation come from the config or the flags
below); see "Refresh placement" for where the index refresh runs.

Inputs. `--index` is a BlockIndex directory or Hub id (`realm-build-index`, or OUTPUT_DIR/index of
`pretrain_ict.py`) whose blocks carry their `doc_id`. `--retriever` initialises the query and block towers: an ICT
output (`pretrain_ict.py`'s OUTPUT_DIR/final), a REALM retriever/scorer/embedder checkpoint or a plain BERT (both
towers copy it, with a fresh 128-d projection); `--separate-towers` splits a shared tower into two copies (REALM and
ORQA train separate towers). `--encoder` initialises the knowledge-augmented encoder: a REALM encoder checkpoint or
a BERT (its MLM head is used when the checkpoint has one). Both default to the offline demo BERT (all-MiniLM-L6-v2,
the `demo` extra). The index should have been built with the retriever's block tower (a warning says otherwise).

Queries. The texts of the index's blocks (or of `--corpus` documents, whose `doc_id`s must match the index's) are cut
into sentence-greedy queries of at most `--query-max-length` (96) wordpieces and masked with `--masking`: `salient`
(REALM: one named entity or date per sentence; spans found once with `--salient-backend`, spaCy when installed),
`random_token` (BERT) or `random_span` (SpanBERT-style), the masking ablation of REALM's Table 2.

Each step: the masked queries are embedded by the current query tower (no gradients) to search the index for the top
`--top-k` - 1 (7) blocks outside the query's own document; the null block is put first; relevance scores are
recomputed in torch by both towers (the retrieved blocks' tokens go through the current block tower, with gradients);
the encoder reads `[CLS] masked query [SEP] block [SEP]` for every candidate and the loss is
-log sum_k p(z_k|x) p(y|z_k, x), averaged over masked tokens. Logged every `--logging-steps`: the masked-LM loss, the
retrieval utility RU = log p(y|z_1, x) - log p(y|null, x) of the top retrieved block (summed over a query's masked
tokens) and the index staleness (steps since the block tower that embedded the index).

Index refresh (`--refresh-mode`, every `--refresh-every` steps, default 500): `async` (REALM; a background process
re-encodes the blocks with the newest saved block tower and the index is swapped in between steps, training never
waits, a failed refresh is logged and training goes on with the old index), `sync` (pause and rebuild; exact resume),
`rerank` (retrieve `--rerank-factor` x k blocks from the stale index and re-embed them with the current tower) or
`none`. Index versions live in `--index-work-dir` (default OUTPUT_DIR/index_versions, the newest
`--keep-index-versions` kept).

Refresh placement. The async worker encodes on `--refresh-device`: by default the trainer's device type (it shares
GPU 0 with training process 0 and slows it). With several GPUs, keep one for the worker: e.g. on 8 GPUs
`accelerate launch --num_processes 7 --gpu_ids 0,1,2,3,4,5,6 ... --refresh-device cuda:7` (accelerate then sets
CUDA_VISIBLE_DEVICES for the trainers only if asked: pass `--refresh-visible-devices 7 --refresh-device cuda` to pin
the worker's view explicitly). On several machines the worker runs on the main machine and writes the index versions
to `--index-work-dir`, which must be on a file system every machine reads (every process loads each new version).

Checkpoints. `--checkpointing-steps N` writes `accelerator.save_state` directories OUTPUT_DIR/step_N (through a
temporary directory renamed into place) with the data position, the index version, the RNG states and the unlogged
metrics; `--resume-from-checkpoint PATH|latest` continues (exactly as the uninterrupted run, in `sync` and `none`
modes with dropout 0; `async` swaps depend on timing). OUTPUT_DIR/final/retriever and OUTPUT_DIR/final/encoder hold
the trained models (save_pretrained + tokenizer), OUTPUT_DIR/metrics.json the logged history.

REALM pretrained 200k steps at batch 512 with lr 3e-5 on 64 TPUs; the defaults here (8 queries per device, 1000
steps) fit one GPU and a short run.
"""

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, get_linear_schedule_with_warmup

from index_builder import TEXT_COLUMNS, BlockIndex
from modeling_realm import RealmKnowledgeAugEncoder, init_from_bert, load_retriever, training
from modeling_realm.models import demo_model_path
from modeling_realm.pretraining import (
    DEFAULT_ENCODER_LENGTH,
    DEFAULT_NUM_CANDIDATES,
    DEFAULT_REFRESH_EVERY,
    DEFAULT_RERANK_FACTOR,
    MODES,
    IndexRefresher,
    MaskedQueryCollator,
    RealmPretrainingModel,
    freeze_unused_parameters,
    pretraining_inputs,
    query_examples,
)
from tokenization import DEFAULT_BLOCK_SEQ_LEN, DEFAULT_QUERY_LENGTH, MASKINGS, add_salient_spans, load_corpus

logger = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("models and data")
    data.add_argument("--index", required=True, help="BlockIndex directory or Hub dataset id (blocks with doc_id)")
    data.add_argument("--retriever", default=None, help="ICT output, REALM retriever/scorer/embedder or BERT")
    data.add_argument("--encoder", default=None, help="REALM encoder checkpoint or BERT (default: demo MiniLM)")
    data.add_argument("--tokenizer", default=None, help="tokenizer directory or Hub id (default: --retriever)")
    data.add_argument("--separate-towers", action="store_true", help="split a shared retriever tower into two")
    data.add_argument("--corpus", default=None, help="documents for the queries (default: the index's blocks)")
    data.add_argument("--title-field", default="title")
    data.add_argument("--text-field", default="text")
    data.add_argument("--doc-id-field", default="doc_id")
    data.add_argument("--masking", choices=MASKINGS, default="salient")
    data.add_argument("--salient-backend", choices=["auto", "spacy", "regex"], default="auto")
    data.add_argument("--query-max-length", type=int, default=DEFAULT_QUERY_LENGTH, help="REALM: 96")
    data.add_argument("--block-max-length", type=int, default=DEFAULT_BLOCK_SEQ_LEN,
                      help="block tower input length (as the index builder)")
    data.add_argument("--encoder-max-length", type=int, default=DEFAULT_ENCODER_LENGTH,
                      help="[CLS] query [SEP] block [SEP] length; the block is truncated to fit")
    data.add_argument("--top-k", type=int, default=DEFAULT_NUM_CANDIDATES, help="candidates per query, null included")
    refresh = parser.add_argument_group("index refresh")
    refresh.add_argument("--refresh-mode", choices=MODES, default="async")
    refresh.add_argument("--refresh-every", type=int, default=DEFAULT_REFRESH_EVERY, help="optimizer steps")
    refresh.add_argument("--rerank-factor", type=int, default=DEFAULT_RERANK_FACTOR)
    refresh.add_argument("--refresh-device", default=None, help="device of the async worker (default: trainer's)")
    refresh.add_argument("--refresh-visible-devices", default=None, help="CUDA_VISIBLE_DEVICES of the async worker")
    refresh.add_argument("--refresh-batch-size", type=int, default=64)
    refresh.add_argument("--index-work-dir", default=None, help="index versions (default OUTPUT_DIR/index_versions)")
    refresh.add_argument("--keep-index-versions", type=int, default=2)
    train = parser.add_argument_group("training")
    training.add_optimizer_arguments(train)
    train.add_argument("--output-dir", required=True)
    train.add_argument("--per-device-train-batch-size", type=int, default=8, help="REALM: 512 in all")
    train.add_argument("--learning-rate", type=float, default=3e-5)
    train.add_argument("--warmup-ratio", type=float, default=0.05)
    train.add_argument("--max-train-steps", type=int, default=1000, help="optimizer steps (REALM: 200k)")
    train.add_argument("--num-train-epochs", type=int, default=None, help="also stop after this many epochs")
    train.add_argument("--dataloader-num-workers", type=int, default=0)
    run = parser.add_argument_group("checkpoints and logging")
    training.add_run_arguments(run)
    run.add_argument("--checkpointing-steps", type=int, default=None, help="save state every N optimizer steps")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    positive = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_train_steps", "logging_steps",
                "refresh_every", "rerank_factor", "refresh_batch_size", "keep_index_versions")
    for name in positive + ("num_train_epochs", "checkpointing_steps"):
        value = getattr(args, name)
        if (value is not None or name in positive) and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if args.top_k < 2:
        parser.error(f"--top-k must be >= 2 (the null block and at least one retrieved block), got {args.top_k}.")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup-ratio must lie in [0, 1), got {args.warmup_ratio}.")
    if args.query_max_length < 3 or args.encoder_max_length < args.query_max_length + 1:
        parser.error(f"--query-max-length ({args.query_max_length}) must be >= 3 and below --encoder-max-length "
                     f"({args.encoder_max_length}).")


# ------------------------------------------------------------------------------------------------------ setup
def load_encoder(name_or_path: str, seed: int) -> RealmKnowledgeAugEncoder:
    """A REALM encoder checkpoint as is, or one initialised from a BERT (backbone and, when present, MLM head)."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == "realm":
        return RealmKnowledgeAugEncoder.from_pretrained(name_or_path)
    if config.model_type != "bert":
        raise ValueError(f"--encoder {name_or_path} is a {config.model_type!r} model; pass a REALM encoder checkpoint "
                         "(RealmKnowledgeAugEncoder) or a BERT to initialise one.")
    torch.manual_seed(seed)
    return init_from_bert(RealmKnowledgeAugEncoder, name_or_path)


def load_models(args, accelerator):
    """(RealmPretrainingModel, tokenizer); the main process downloads first."""
    with accelerator.main_process_first():
        retriever = load_retriever(args.retriever, seed=args.seed)
        encoder = load_encoder(args.encoder or demo_model_path(), args.seed)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.retriever or demo_model_path())
    if args.separate_towers:
        from modeling_realm.pretraining import with_separate_towers

        retriever = with_separate_towers(retriever)
    model = RealmPretrainingModel(retriever, encoder)
    freeze_unused_parameters(model)
    logger.info("Retriever %s (%s towers), encoder %s", args.retriever or "demo MiniLM",
                "separate" if retriever.config.separate_query_embedder else "shared", args.encoder or "demo MiniLM")
    return model, tokenizer


def load_index(args, accelerator, retriever) -> BlockIndex:
    with accelerator.main_process_first():
        index = BlockIndex.from_pretrained(args.index)
    if not index.check_compatible(retriever, warn=False):  # raises on a dimension mismatch
        logger.warning("The index was built with another block tower than --retriever's; its first refresh (or "
                       "--refresh-mode rerank) brings it in line.")
    if len(index) < args.top_k:
        raise ValueError(f"The index holds {len(index)} blocks, fewer than --top-k {args.top_k} - 1 to retrieve; "
                         "lower --top-k or index a larger corpus.")
    return index


def load_queries(args, tokenizer, index, accelerator):
    """Masked-query texts (with doc_id and, for salient masking, cached spans); the main process works first."""
    import datasets
    from datasets.table import InMemoryTable

    with accelerator.main_process_first():
        if args.corpus is not None:
            source = load_corpus(args.corpus, title_field=args.title_field, text_field=args.text_field,
                                 doc_id_field=args.doc_id_field)
        else:  # an in-memory view of the memory-mapped blocks, so no cache file is written into the index
            source = datasets.Dataset(InMemoryTable(index.blocks.data.table.select(TEXT_COLUMNS)))
        queries = query_examples(source, tokenizer, args.query_max_length)
        if args.masking == "salient":
            queries = add_salient_spans(queries, backend=args.salient_backend)
    logger.info("%d queries of at most %d wordpieces from %s", len(queries), args.query_max_length,
                args.corpus or "the index's blocks")
    return queries


def make_optimizer(model, args):
    """AdamW; biases and normalisation weights (1-d parameters) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def plan_steps(args, num_examples: int, num_processes: int) -> int:
    """Total optimizer steps (full batches only, every process a share of each step)."""
    global_batch = args.per_device_train_batch_size * num_processes
    if num_examples < global_batch:
        raise ValueError(f"Only {num_examples} queries, fewer than one global batch ({global_batch} = "
                         f"{args.per_device_train_batch_size} x {num_processes} processes); lower "
                         "--per-device-train-batch-size or use a larger corpus.")
    per_epoch = max(1, num_examples // global_batch // args.gradient_accumulation_steps)
    total = args.max_train_steps
    if args.num_train_epochs is not None:
        total = min(total, per_epoch * args.num_train_epochs)
    return total


def make_refresher(args, accelerator, index, retriever, tokenizer, optimizer) -> IndexRefresher:
    work_dir = Path(args.index_work_dir or Path(args.output_dir) / "index_versions")
    env = {} if args.refresh_visible_devices is None else {"CUDA_VISIBLE_DEVICES": args.refresh_visible_devices}
    return IndexRefresher(index, retriever, tokenizer, work_dir, mode=args.refresh_mode, every=args.refresh_every,
                          rerank_factor=args.rerank_factor, block_length=args.block_max_length,
                          batch_size=args.refresh_batch_size, mixed_precision=accelerator.mixed_precision,
                          accelerator=accelerator, device=args.refresh_device, worker_env=env,
                          keep_versions=args.keep_index_versions, optimizer=optimizer)


# ------------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(run):
    """Checkpoint the run into output_dir/step_N (all processes take part; see checkpoints.py)."""
    state = {**run.state, "window": reduced_window(run), "refresh": run.refresher.state_dict()}
    training.save_checkpoint(run.accelerator, Path(run.args.output_dir), state)


def resume(run, checkpoint: Path):
    """Reload the accelerator state (weights, optimizer, scheduler, RNG), the data position, the index version and
    the unlogged metrics window (kept by the main process)."""
    run.accelerator.load_state(str(checkpoint))
    state = training.load_trainer_state(checkpoint)
    window = state.pop("window")
    run.refresher.load_state_dict(state.pop("refresh"), state["completed_steps"])
    if run.accelerator.is_main_process:
        run.window = torch.tensor(window, dtype=torch.float64, device=run.accelerator.device)
    run.state = state
    logger.info("Resumed from %s: epoch %d, batch %d, step %d, index version %d", checkpoint, state["epoch"],
                state["batches_done"], state["completed_steps"], run.refresher.version)


def save_models(run, metrics: dict):
    """The trained retriever and encoder (save_pretrained + tokenizer) in OUTPUT_DIR/final/{retriever,encoder}."""
    model = run.accelerator.unwrap_model(run.model)
    training.save_trained(run.accelerator, Path(run.args.output_dir) / "final",
                 {"retriever": model.retriever, "encoder": model.encoder}, run.tokenizer, metrics)


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class Run:
    """What the training loop works on. `state` is JSON (saved with every checkpoint); `window` is this process's
    [sum of losses, sum of retrieval utilities, batches] since the last log line."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DataLoader
    collator: MaskedQueryCollator
    refresher: IndexRefresher
    total_steps: int
    state: dict = field(default_factory=lambda: {"completed_steps": 0, "epoch": 0, "batches_done": 0, "history": []})
    window: torch.Tensor = None
    progress: object = None


def training_step(run: Run, batch: dict):
    """Retrieve for `batch` (no gradients), then one forward/backward (and optimizer step when accumulation ends)."""
    accelerator, args = run.accelerator, run.args
    retriever = accelerator.unwrap_model(run.model).retriever
    inputs, _ = pretraining_inputs(retriever, run.tokenizer, batch, run.refresher.retrieve, args.top_k,
                                   args.block_max_length, args.encoder_max_length, autocast=accelerator.autocast)
    inputs = {key: value.to(accelerator.device) for key, value in inputs.items()}
    with accelerator.accumulate(run.model):
        out = run.model(**inputs)
        accelerator.backward(out.loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return out


def train_epoch(run: Run, batches):
    """Train on `batches` (the epoch's loader, less the batches a resumed checkpoint had done)."""
    accelerator, state = run.accelerator, run.state
    for batch in batches:
        out = training_step(run, batch)
        utility = out.retrieval_utility.float().mean()
        run.window += torch.stack([out.loss.detach().float(), utility, torch.ones_like(utility)]).double()
        state["batches_done"] += 1
        if accelerator.sync_gradients:
            state["completed_steps"] += 1
            run.progress.update(1)
            run.refresher.after_step(state["completed_steps"])
            after_step(run)
            if state["completed_steps"] >= run.total_steps:
                break


def reduced_window(run: Run) -> list[float]:
    """The metrics window summed over all processes (a collective call)."""
    return run.accelerator.reduce(run.window.clone(), reduction="sum").tolist()


def after_step(run: Run):
    args, state, refresher = run.args, run.state, run.refresher
    steps = state["completed_steps"]
    if steps % args.logging_steps == 0 or steps == run.total_steps:
        loss, utility, batches = reduced_window(run)
        run.window.zero_()
        record = {"step": steps, "loss": loss / batches, "retrieval_utility": utility / batches,
                  "index_staleness": refresher.staleness(steps), "index_version": refresher.version,
                  "refreshes": refresher.refreshes, "refresh_failures": refresher.failures,
                  "learning_rate": run.scheduler.get_last_lr()[0]}
        state["history"].append(record)
        run.progress.set_postfix(loss=f"{record['loss']:.4f}", ru=f"{record['retrieval_utility']:.3f}",
                                 stale=record["index_staleness"])
        run.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=steps)
    if args.checkpointing_steps is not None and steps % args.checkpointing_steps == 0:
        save_checkpoint(run)


def setup(args) -> Run:
    accelerator = training.make_accelerator(args)
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(args.seed)
    model, tokenizer = load_models(args, accelerator)
    index = load_index(args, accelerator, model.retriever)
    queries = load_queries(args, tokenizer, index, accelerator)
    model.train()
    total_steps = plan_steps(args, len(queries), accelerator.num_processes)
    optimizer = make_optimizer(model, args)
    # A prepared scheduler steps once per process per optimizer step, hence the factor.
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(args.warmup_ratio * total_steps) * accelerator.num_processes,
        total_steps * accelerator.num_processes)
    collator = MaskedQueryCollator(tokenizer, args.masking, args.query_max_length, args.seed, args.salient_backend)
    loader = DataLoader(queries, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
                        collate_fn=collator, num_workers=args.dataloader_num_workers)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    refresher = make_refresher(args, accelerator, index, accelerator.unwrap_model(model).retriever, tokenizer,
                               optimizer)
    logger.info("%d queries; %d optimizer steps of %d x %d processes x %d accumulation; top-k %d; refresh %s every "
                "%d steps", len(queries), total_steps, args.per_device_train_batch_size, accelerator.num_processes,
                args.gradient_accumulation_steps, args.top_k, args.refresh_mode, args.refresh_every)
    return Run(args, accelerator, model, tokenizer, optimizer, scheduler, loader, collator, refresher, total_steps,
               window=torch.zeros(3, dtype=torch.float64, device=accelerator.device))


def train(run: Run):
    state = run.state
    run.progress = tqdm(total=run.total_steps, initial=state["completed_steps"], desc="REALM",
                        disable=not run.accelerator.is_local_main_process)
    while state["completed_steps"] < run.total_steps:
        run.loader.set_epoch(state["epoch"])  # the shuffle depends on (seed, epoch) only: a resumed run sees the same
        run.collator.set_epoch(state["epoch"])
        train_epoch(run, training.batches_left(run.accelerator, run.loader, run.state["batches_done"]))
        if state["completed_steps"] < run.total_steps:
            state["epoch"], state["batches_done"] = state["epoch"] + 1, 0
    run.progress.close()


def main(argv=None) -> dict:
    """Run REALM pretraining; returns the metrics also written to OUTPUT_DIR/metrics.json."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    checkpoint = training.checkpoint_to_resume(output_dir, args.resume_from_checkpoint)
    run = setup(args)
    run.accelerator.init_trackers("pretrain_realm", config={k: v for k, v in vars(args).items()
                                                           if isinstance(v, (int, float, str, bool))})
    try:
        if checkpoint is not None:
            resume(run, checkpoint)
        train(run)
    finally:
        run.refresher.close()
    state, refresher = run.state, run.refresher
    metrics = {"completed_steps": state["completed_steps"], "num_processes": run.accelerator.num_processes,
               "refresh_mode": args.refresh_mode, "index_version": refresher.version,
               "index_directory": None if refresher.index.directory is None else str(refresher.index.directory),
               "refreshes": refresher.refreshes, "refresh_failures": refresher.failures,
               "refresh_wait_seconds": refresher.wait_seconds, "history": state["history"]}
    save_models(run, metrics)
    if run.accelerator.is_main_process:
        training.write_json(output_dir / "metrics.json", metrics)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    last = state["history"][-1] if state["history"] else {}
    run.accelerator.print(f"trained {state['completed_steps']} steps; last loss {last.get('loss', math.nan):.4f}, "
                          f"retrieval utility {last.get('retrieval_utility', math.nan):.3f}; index version "
                          f"{refresher.version}; models in {output_dir / 'final'}")
    return metrics


if __name__ == "__main__":
    main()
