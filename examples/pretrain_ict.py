"""Train a REALM retriever's two towers with in-batch negatives under accelerate: the Inverse Cloze Task (ICT; Lee
et al. 2019, ORQA) on a corpus, the warm start, or real questions with the blocks that answer them (`--qa-file`,
supervised as DPR).

    accelerate launch examples/pretrain_ict.py --model bert-base-uncased --corpus corpus.jsonl --output-dir out/ict \\
        --eval-file dev.jsonl
    accelerate launch examples/pretrain_ict.py --qa-file train.jsonl --index INDEX_DIR --output-dir out/retriever

Also runs as `python examples/pretrain_ict.py ...` (one process) or `torchrun --nproc_per_node N
examples/pretrain_ict.py ... --cpu` (several CPU processes need `--cpu`). Without `--model` the offline demo BERT
(all-MiniLM-L6-v2, the `demo` extra) is used. `--model` may be a plain BERT (both towers copy it, with the
projection `--projection` says), a REALM retriever/scorer/embedder checkpoint, or an earlier run's OUTPUT_DIR/final.

Data: `--corpus` is anything `tokenization.load_corpus` reads (jsonl/json/csv/tsv/parquet, a saved datasets
directory, a Hub dataset id); its documents are cut into blocks of at most `--block-wordpieces` (288) wordpieces.
Or `--blocks` is a `Dataset.save_to_disk` directory of blocks (`title`, `text`, optional `block_id`, `doc_id`), e.g.
from `split_into_blocks`. Blocks with fewer than two sentences give no ICT example and are left out of training.

Each step: every block of the batch gives one sentence as a query (`--query-max-length` 64, ORQA's ICT length; REALM's
96 is for its masked pretraining queries, longer than a sentence); the target is the block with that sentence cut
out, except with probability `--keep-prob` 0.1; the loss is the cross-entropy of every query's inner products with
all the blocks of the global batch (gathered across processes with gradients, so `--per-device-train-batch-size` x
processes is the number of candidates per query; accumulation steps do not add negatives). Defaults follow ORQA:
AdamW, lr 1e-4, 10% linear warmup then linear decay, separate query and block towers that start from the same
weights (`--towers shared` for one tower). ORQA trained 100k steps at batch 4096 on TPUs; the defaults here (32 per
device, `--max-train-steps` 1000) fit one GPU and a short run, raise both for a real warm start.

`--checkpointing-steps N` writes `accelerator.save_state` directories OUTPUT_DIR/step_N (through a temporary
directory renamed into place) with the data position; `--resume-from-checkpoint PATH|latest` continues as the
uninterrupted run would. OUTPUT_DIR/final holds the trained `RealmRetriever` (save_pretrained + tokenizer),
OUTPUT_DIR/metrics.json the logged loss and in-batch accuracy. With `--eval-file` (QA records with gold passages,
`gold_doc_id` or `passage_id` as `load_qa_file` reads them) a Flat index of all blocks is built with the trained
block tower in OUTPUT_DIR/index and the gold-passage recall@k of the query tower is reported (`--eval-at-start` also
scores the initial model, index in OUTPUT_DIR/index_initial).

Supervised pairs (`--qa-file` QA records, `--index` a BlockIndex built with `--model`'s block tower, e.g. by
`realm-build-index --model` the same): before training, every question is searched with the initial question tower
(`--mining-blocks` 32 blocks); its positive is the best-ranked block of its gold passage (`passage_id`/`gold_doc_id`
in the record) or, without one, the best-ranked block that holds an answer (`--match`), and its hard negative the
best-ranked block that is neither (`--no-hard-negatives`: in-batch negatives only); questions without a positive are
left out. Each step scores the questions against the batch's positives and hard negatives. The defaults in this mode
are the measured ones (benchmarks/README.md section 5): one shared tower, lr 5e-5, batch 16, one epoch; on SQuAD from
all-MiniLM-L6-v2, 150 such steps (16 minutes on 2 CPU cores) raised the gold-passage recall@1/5 of questions about
passages never trained on from 61.8/85.9 to 68.3/89.9 (at lr 2e-5 a one-off script measured 89.8). The index is not changed: build a
new one with OUTPUT_DIR/final (`realm-build-index --model OUTPUT_DIR/final`) before fine-tuning a reader on it
(`finetune_openqa.py --model OUTPUT_DIR/final`).
"""

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from index_builder import build_index, with_block_ids
from modeling_realm import load_retriever, training
from modeling_realm.models import demo_model_path, sentence_transformers_pooling
from index_builder import BlockIndex
from modeling_realm.openqa import (
    DEFAULT_KS,
    DEFAULT_MINING_BLOCKS,
    RetrieverPairCollator,
    gold_block_recall,
    load_qa_file,
    mine_retriever_pairs,
)
from modeling_realm.pretraining import (
    DEFAULT_KEEP_PROB,
    ICT_QUERY_LENGTH,
    IctCollator,
    can_make_ict_example,
    freeze_unused_heads,
    in_batch_loss,
    with_separate_towers,
)
from tokenization import DEFAULT_BLOCK_SEQ_LEN, DEFAULT_MAX_BLOCK_LENGTH, load_corpus, split_into_blocks

logger = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", default=None, help="BERT or REALM retriever directory/Hub id (default: demo MiniLM)")
    data.add_argument("--tokenizer", default=None, help="tokenizer directory or Hub id (default: --model)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="documents: a file, saved datasets directory or Hub id (load_corpus)")
    source.add_argument("--blocks", help="pre-split blocks: a Dataset.save_to_disk directory with title and text")
    source.add_argument("--qa-file", help="supervised pairs instead of ICT: QA records (jsonl, SQuAD JSON) whose "
                        "positive and hard negative blocks are mined from --index")
    data.add_argument("--index", default=None, help="with --qa-file: BlockIndex directory built with --model")
    data.add_argument("--match", choices=["string", "regex"], default="string",
                      help="with --qa-file: answers are strings or regular expressions (CuratedTREC)")
    data.add_argument("--mining-blocks", type=int, default=DEFAULT_MINING_BLOCKS,
                      help="with --qa-file: blocks searched per question for its positive and hard negative")
    data.add_argument("--no-hard-negatives", dest="hard_negatives", action="store_false",
                      help="with --qa-file: in-batch negatives only")
    data.add_argument("--title-field", default="title")
    data.add_argument("--text-field", default="text")
    data.add_argument("--doc-id-field", default="doc_id")
    data.add_argument("--block-wordpieces", type=int, default=DEFAULT_MAX_BLOCK_LENGTH,
                      help="most wordpieces of text per block when splitting --corpus (REALM: 288)")
    data.add_argument("--query-max-length", type=int, default=ICT_QUERY_LENGTH, help="query wordpieces (ORQA 64)")
    data.add_argument("--block-max-length", type=int, default=DEFAULT_BLOCK_SEQ_LEN,
                      help="block tower input length, title and special tokens included (as the index builder)")
    data.add_argument("--keep-prob", type=float, default=DEFAULT_KEEP_PROB,
                      help="probability that the query sentence stays in its block (ORQA: 0.1)")
    data.add_argument("--projection", choices=["auto", "identity", "random"], default="auto",
                      help="a plain BERT's retrieval projection (load_retriever): auto = the identity at full width "
                           "for a sentence encoder, a fresh 128-d one otherwise")
    data.add_argument("--towers", choices=["separate", "shared"], default=None,
                      help="separate query and block towers from the same weights (ORQA), or one shared tower "
                           "(default: separate for ICT, shared for --qa-file)")
    train = parser.add_argument_group("training")
    training.add_optimizer_arguments(train)
    train.add_argument("--output-dir", required=True)
    train.add_argument("--per-device-train-batch-size", type=int, default=None,
                       help="default 32 for ICT (ORQA: 4096 in all), 16 for --qa-file")
    train.add_argument("--learning-rate", type=float, default=None, help="default 1e-4 (ORQA), 5e-5 for --qa-file")
    train.add_argument("--warmup-ratio", type=float, default=0.1)
    train.add_argument("--max-train-steps", type=int, default=1000, help="optimizer steps (ORQA: 100k)")
    train.add_argument("--num-train-epochs", type=int, default=None,
                       help="also stop after this many epochs (default: none for ICT, 1 for --qa-file)")
    train.add_argument("--dataloader-num-workers", type=int, default=0)
    run = parser.add_argument_group("checkpoints, logging and evaluation")
    training.add_run_arguments(run)
    run.add_argument("--checkpointing-steps", type=int, default=None, help="save state every N optimizer steps")
    run.add_argument("--eval-file", default=None, help="QA records with gold passages: gold recall@k at the end")
    run.add_argument("--eval-k", default=",".join(map(str, DEFAULT_KS)), help="comma-separated recall cut-offs")
    run.add_argument("--eval-at-start", action="store_true", help="also score the initial model")
    run.add_argument("--max-eval-samples", type=int, default=None, help="score only the first N questions")
    run.add_argument("--per-device-eval-batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    fill_defaults(args)
    check_args(parser, args)
    return args


QA_DEFAULTS = {"towers": "shared", "per_device_train_batch_size": 16, "learning_rate": 5e-5, "num_train_epochs": 1}
ICT_DEFAULTS = {"towers": "separate", "per_device_train_batch_size": 32, "learning_rate": 1e-4,
                "num_train_epochs": None}


def fill_defaults(args) -> None:
    """The settings left unset, per mode: ORQA's for ICT; for --qa-file the ones measured on SQuAD."""
    for name, value in (QA_DEFAULTS if args.qa_file else ICT_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_args(parser, args):
    positive = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_train_steps", "logging_steps",
                "per_device_eval_batch_size", "block_wordpieces", "mining_blocks")
    for name in positive + ("num_train_epochs", "checkpointing_steps", "max_eval_samples"):
        value = getattr(args, name)
        if (value is not None or name in positive) and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if args.qa_file is not None and args.index is None:
        parser.error("--qa-file needs --index: the BlockIndex built with --model's block tower (realm-build-index "
                     "--model ...), where each question's positive and hard negative blocks are found.")
    if args.qa_file is None and args.index is not None:
        parser.error("--index is used with --qa-file only; ICT (--corpus or --blocks) needs no index.")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup-ratio must lie in [0, 1), got {args.warmup_ratio}.")
    if not 0 <= args.keep_prob <= 1:
        parser.error(f"--keep-prob must lie in [0, 1], got {args.keep_prob}.")
    try:
        args.eval_k = sorted({int(k) for k in args.eval_k.split(",")})
    except ValueError:
        parser.error(f"--eval-k must be comma-separated integers such as 1,5,20, got {args.eval_k!r}.")
    if args.eval_k[0] < 1:
        parser.error(f"--eval-k values must be >= 1, got {args.eval_k}.")


# ------------------------------------------------------------------------------------------------------ setup
def load_model(args, accelerator):
    """(RealmRetriever with the towers --towers asks for, tokenizer); the main process downloads first."""
    with accelerator.main_process_first():
        # --qa-file mines with the towers realm-build-index built the index with: load_retriever's default seed.
        seed = args.seed if args.qa_file is None else 0
        model = load_retriever(args.model, seed=seed, projection=args.projection)
        if args.qa_file is None and sentence_transformers_pooling(args.model or demo_model_path()):
            logger.warning("%s is a sentence encoder, already trained for retrieval: ICT measured no gain on it (SQuAD "
                           "gold recall@5 of all-MiniLM-L6-v2 86.5 -> 85.7 after 130 steps of 32 at lr 2e-5; "
                           "benchmarks/README.md section 5). ICT is the warm start for a BERT never trained for "
                           "retrieval; a sentence encoder can go straight to finetune_openqa.py.",
                           args.model or "the demo MiniLM")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model or demo_model_path())
    if args.towers == "separate":
        model = with_separate_towers(model)
    elif model.config.separate_query_embedder:
        raise ValueError(f"{args.model} has separate query and block towers, but --towers shared was given; leave "
                         "--towers at its default (separate) to keep training both.")
    freeze_unused_heads(model)
    logger.info("Model %s: %s towers, %d-d embeddings", args.model or "demo MiniLM", args.towers,
                model.config.retriever_proj_size)
    return model, tokenizer


def load_blocks(args, tokenizer, accelerator):
    """(all blocks with block_id and doc_id, the blocks that give ICT examples); the main process works first."""
    import datasets

    with accelerator.main_process_first():
        if args.corpus is not None:
            corpus = load_corpus(args.corpus, title_field=args.title_field, text_field=args.text_field,
                                 doc_id_field=args.doc_id_field)
            blocks = split_into_blocks(corpus, tokenizer, max_block_length=args.block_wordpieces)
        else:
            if not Path(args.blocks).is_dir():
                raise FileNotFoundError(f"No blocks directory at {args.blocks}; pass a Dataset.save_to_disk "
                                        "directory of blocks, or use --corpus for documents.")
            blocks = datasets.load_from_disk(args.blocks)
            if isinstance(blocks, datasets.DatasetDict):
                raise ValueError(f"{args.blocks} holds a DatasetDict with splits {list(blocks)}; pass the directory "
                                 f"of one split ({args.blocks}/<split>).")
            missing = [name for name in ("title", "text") if name not in blocks.column_names]
            if missing:
                raise ValueError(f"The blocks at {args.blocks} lack the column(s) {missing} (columns: "
                                 f"{blocks.column_names}); write blocks with title and text, e.g. split_into_blocks.")
        blocks = with_block_ids(blocks)
        usable = blocks.filter(lambda texts: [can_make_ict_example(text) for text in texts], batched=True,
                               input_columns="text", desc="Keeping blocks with two or more sentences")
    logger.info("%d blocks, %d of them with two or more sentences (ICT examples)", len(blocks), len(usable))
    return blocks, usable.select_columns(["block_id", "title", "text"])


def load_pairs(args, model, tokenizer, accelerator):
    """(the index's blocks, the mined pairs, the index) for --qa-file; every process mines all pairs."""
    index = BlockIndex.from_pretrained(args.index)  # a directory or a Hub dataset id, as finetune_openqa.py
    index.check_compatible(model)
    records = load_qa_file(args.qa_file, match=args.match)
    pairs, _ = mine_retriever_pairs(model, tokenizer, index, records, args.mining_blocks, args.match,
                                    progress=accelerator.is_local_main_process)
    if not pairs:
        raise ValueError(f"No question of {args.qa_file} has a positive block among its {args.mining_blocks} "
                         f"retrieved blocks of {args.index}: check that the index holds the passages the questions "
                         "are about and was built with --model, or raise --mining-blocks.")
    blocks = index.blocks.select_columns(["block_id", "doc_id", "title", "text"])
    return blocks, pairs, index


def load_eval(args) -> list[dict]:
    """The --eval-file records that name a gold passage (an error if none does)."""
    if args.eval_file is None:
        return []
    records = load_qa_file(args.eval_file)
    kept = [record for record in records if record.get("gold_doc_id") is not None]
    if not kept:
        raise ValueError(f"{args.eval_file}: no record names its gold passage; recall needs a 'gold_doc_id' (or "
                         "'passage_id') per question, matching the corpus doc ids, or SQuAD JSON.")
    if len(kept) < len(records):
        logger.warning("%s: %d of %d questions have no gold passage and are not scored.", args.eval_file,
                       len(records) - len(kept), len(records))
    return kept[:args.max_eval_samples]


def make_optimizer(model, args):
    """AdamW; biases and normalisation weights (1-d parameters) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def plan_steps(args, num_examples: int, num_processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps): full batches only, every process a share of each step."""
    global_batch = args.per_device_train_batch_size * num_processes
    if num_examples < global_batch:
        raise ValueError(f"Only {num_examples} training examples (blocks with ICT examples, or questions with a "
                         f"positive), fewer than one global batch ({global_batch} "
                         f"= {args.per_device_train_batch_size} x {num_processes} processes); lower "
                         "--per-device-train-batch-size or use a larger corpus.")
    per_epoch = math.ceil(num_examples // global_batch / args.gradient_accumulation_steps)
    total = args.max_train_steps
    if args.num_train_epochs is not None:
        total = min(total, per_epoch * args.num_train_epochs)
    return per_epoch, total


# ------------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(run):
    """Checkpoint the run into output_dir/step_N (all processes take part; see checkpoints.py)."""
    training.save_checkpoint(run.accelerator, Path(run.args.output_dir), {**run.state, "window": reduced_window(run)})


def resume(run, checkpoint: Path):
    """Reload the accelerator state, the data position and the unlogged loss window (kept by the main process)."""
    run.accelerator.load_state(str(checkpoint))
    state = training.load_trainer_state(checkpoint)
    window = state.pop("window")
    if run.accelerator.is_main_process:
        run.window = torch.tensor(window, dtype=torch.float64, device=run.accelerator.device)
    run.state = state
    logger.info("Resumed from %s: epoch %d, batch %d, step %d", checkpoint, state["epoch"], state["batches_done"],
                state["completed_steps"])


def save_model(run, directory: Path, metrics: dict):
    """save_pretrained of the unwrapped retriever + tokenizer (+ metrics.json) to `directory`, atomically."""
    model = run.accelerator.unwrap_model(run.model)
    training.save_trained(run.accelerator, directory, {"": model}, run.tokenizer, metrics)


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate(run, name: str) -> dict:
    """Gold-passage recall@k (%) of the eval questions against a Flat index of all blocks in OUTPUT_DIR/`name`."""
    accelerator, args = run.accelerator, run.args
    model = accelerator.unwrap_model(run.model)
    index = build_index(run.all_blocks, model, run.tokenizer, Path(args.output_dir) / name, factory="Flat",
                        batch_size=args.per_device_eval_batch_size, max_length=args.block_max_length,
                        accelerator=accelerator, mixed_precision=accelerator.mixed_precision, overwrite=True,
                        progress=accelerator.is_local_main_process)
    k = min(max(args.eval_k), len(index))
    doc_of = dict(zip(run.all_blocks["block_id"], run.all_blocks["doc_id"]))
    model.eval()
    with accelerator.split_between_processes(run.eval_records) as shard:
        retrieved = []
        for start in tqdm(range(0, len(shard), args.per_device_eval_batch_size), desc=f"recall ({name})",
                          disable=not accelerator.is_local_main_process):
            questions = [record["question"] for record in shard[start:start + args.per_device_eval_batch_size]]
            inputs = run.tokenizer(questions, truncation=True, max_length=args.query_max_length, padding="longest",
                                   return_token_type_ids=True, return_tensors="pt").to(accelerator.device)
            with torch.no_grad(), accelerator.autocast():
                # [batch, proj]
                queries = model.embed_queries(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
            _, block_ids = index.search(queries.float().cpu().numpy(), k)
            retrieved.extend([doc_of[int(b)] for b in row] for row in block_ids)
    retrieved = gather_object(retrieved)
    model.train()
    recall = gold_block_recall(retrieved, [record["gold_doc_id"] for record in run.eval_records], args.eval_k)
    logger.info("Gold-passage recall (%s, %d questions, %d blocks): %s", name, len(retrieved), len(index), recall)
    return recall


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class Run:
    """What the training loop works on. `state` is JSON (saved with every checkpoint); `window` is this process's
    [sum of losses, sum of in-batch accuracies, batches] since the last log line."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DataLoader
    collator: object
    all_blocks: object
    eval_records: list
    total_steps: int
    state: dict = field(default_factory=lambda: {"completed_steps": 0, "epoch": 0, "batches_done": 0,
                                                 "num_candidates": None, "history": []})
    window: torch.Tensor = None
    progress: object = None


def train_epoch(run: Run, batches):
    """Train on `batches` (the epoch's loader, less the batches a resumed checkpoint had done)."""
    accelerator, model, args, state = run.accelerator, run.model, run.args, run.state
    for batch in batches:
        with accelerator.accumulate(model):
            out = model(**batch, return_dict=True)
            # The loss sees the blocks of every process as candidates.
            result = in_batch_loss(out.query_embeddings, out.block_embeddings)
            accelerator.backward(result.loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        run.window += torch.stack([result.loss.detach(), result.accuracy, torch.ones_like(result.accuracy)]).double()
        state["batches_done"] += 1
        state["num_candidates"] = result.num_candidates
        if accelerator.sync_gradients:
            state["completed_steps"] += 1
            run.progress.update(1)
            after_step(run)
            if state["completed_steps"] >= run.total_steps:
                break


def reduced_window(run: Run) -> list[float]:
    """The loss window summed over all processes (a collective call)."""
    return run.accelerator.reduce(run.window.clone(), reduction="sum").tolist()


def after_step(run: Run):
    args, state = run.args, run.state
    steps = state["completed_steps"]
    if steps % args.logging_steps == 0 or steps == run.total_steps:
        loss, accuracy, batches = reduced_window(run)
        run.window.zero_()
        record = {"step": steps, "loss": loss / batches, "accuracy": accuracy / batches,
                  "learning_rate": run.scheduler.get_last_lr()[0]}
        state["history"].append(record)
        run.progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
        run.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=steps)
    if args.checkpointing_steps is not None and steps % args.checkpointing_steps == 0:
        save_checkpoint(run)


def setup(args) -> Run:
    accelerator = training.make_accelerator(args)
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(args.seed)
    eval_records = load_eval(args)
    model, tokenizer = load_model(args, accelerator)
    if args.qa_file is None:
        all_blocks, train_blocks = load_blocks(args, tokenizer, accelerator)
        collator = IctCollator(tokenizer, args.query_max_length, args.block_max_length, args.keep_prob, args.seed)
    else:
        all_blocks, train_blocks, index = load_pairs(args, model, tokenizer, accelerator)
        collator = RetrieverPairCollator(tokenizer, index, args.query_max_length, args.block_max_length,
                                         args.hard_negatives)
    model.train()
    per_epoch, total_steps = plan_steps(args, len(train_blocks), accelerator.num_processes)
    optimizer = make_optimizer(model, args)
    # A prepared scheduler steps once per process per optimizer step, hence the factor.
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(args.warmup_ratio * total_steps) * accelerator.num_processes,
        total_steps * accelerator.num_processes)
    # Full batches only: every query then has the same number of candidates, none of them a duplicate.
    loader = DataLoader(train_blocks, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
                        collate_fn=collator, num_workers=args.dataloader_num_workers)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    logger.info("%d training examples; %d optimizer steps of %d x %d processes x %d accumulation (%d per epoch)",
                len(train_blocks), total_steps, args.per_device_train_batch_size, accelerator.num_processes,
                args.gradient_accumulation_steps, per_epoch)
    return Run(args, accelerator, model, tokenizer, optimizer, scheduler, loader, collator, all_blocks, eval_records,
               total_steps, window=torch.zeros(3, dtype=torch.float64, device=accelerator.device))


def main(argv=None) -> dict:
    """Run ICT; returns the metrics also written to OUTPUT_DIR/metrics.json."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    checkpoint = training.checkpoint_to_resume(output_dir, args.resume_from_checkpoint)
    run = setup(args)
    run.accelerator.init_trackers("pretrain_ict", config={k: v for k, v in vars(args).items()
                                                         if isinstance(v, (int, float, str, bool))})
    evaluation = {}
    if checkpoint is not None:
        resume(run, checkpoint)
    elif args.eval_at_start and run.eval_records:
        evaluation["initial"] = evaluate(run, "index_initial")
    state = run.state
    desc = "ICT" if run.args.qa_file is None else "retriever pairs"
    run.progress = tqdm(total=run.total_steps, initial=state["completed_steps"], desc=desc,
                        disable=not run.accelerator.is_local_main_process)
    while state["completed_steps"] < run.total_steps:
        run.loader.set_epoch(state["epoch"])  # the shuffle depends on (seed, epoch) only: a resumed run sees the same
        run.collator.set_epoch(state["epoch"])
        train_epoch(run, training.batches_left(run.accelerator, run.loader, run.state["batches_done"]))
        if state["completed_steps"] < run.total_steps:
            state["epoch"], state["batches_done"] = state["epoch"] + 1, 0
    run.progress.close()
    metrics = {"completed_steps": state["completed_steps"], "num_candidates": state["num_candidates"],
               "num_processes": run.accelerator.num_processes, "num_blocks": len(run.all_blocks),
               "num_pairs" if run.args.qa_file else "num_ict_blocks": len(run.loader.dataset),
               "history": state["history"]}
    save_model(run, output_dir / "final", metrics)
    if run.eval_records:
        evaluation["final"] = evaluate(run, "index")
        metrics["eval"] = evaluation
    if run.accelerator.is_main_process:
        training.write_json(output_dir / "metrics.json", metrics)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    last = state["history"][-1] if state["history"] else {}
    run.accelerator.print(f"trained {state['completed_steps']} steps; last loss {last.get('loss', float('nan')):.4f}, "
                          f"in-batch accuracy {last.get('accuracy', float('nan')):.3f} over {state['num_candidates']} "
                          f"candidates; retriever in {output_dir / 'final'}")
    return metrics


if __name__ == "__main__":
    main()
