"""Fine-tune `RealmForOpenQA` for open-domain QA (the ORQA/REALM recipe) with accelerate.

    accelerate launch examples/finetune_openqa.py --model DIR_OR_ID --index INDEX_DIR \\
        --train-file train.jsonl --dev-file dev.jsonl --output-dir out

Also runs as `python examples/finetune_openqa.py ...` (one process) or under `torchrun` (several CPU processes need
`--cpu`). `--model` is a RealmForOpenQA directory or Hub id (e.g. google/realm-orqa-nq-openqa); `--index` a BlockIndex
directory or Hub dataset id (`BlockIndex.from_pretrained`) built with that model's block embedder; for google's
open-QA checkpoints make it once with `BlockIndex.from_realm_checkpoint(id, allow_pickle=True).save_to_disk(dir)`.
`--model` may also be a BERT or RealmRetriever whose block tower built the index (`realm-build-index --model` the
same): a new RealmForOpenQA then takes its question tower, and a reader from `--reader-model` (default: --model when
it is a BERT, else the demo MiniLM). A new model's reader first learns to read (`--comprehension-steps`, default its
first epoch: each question reads only its best-ranked retrieved block that holds an answer), at lr 1e-4; on SQuAD
from all-MiniLM-L6-v2 one such epoch gave 35.2% exact match on held-out passages (benchmarks/README.md section 5).
The index is frozen and shared: it is not part of the model, every process loads it (memory-mapped), and it only
picks the blocks; the retriever loss reaches the question tower through scores recomputed from the stored block
embeddings.

QA data is NQ-open jsonl (`{"question": ..., "answer": [...]}` per line; DrQA's WebQuestions/CuratedTREC .txt files
too) or a `Dataset.save_to_disk` directory; `--match regex` treats answers as regular expressions (CuratedTREC). Each
step retrieves `--num-blocks` blocks per question (default config.searcher_beam_size) for the retriever loss and reads
the first config.reader_beam_size of them. After every epoch the dev set is answered with `model.answer` (split over
the processes) and scored by exact match; the best model so far is saved to OUTPUT_DIR/best (save_pretrained +
tokenizer + metrics.json).

`--checkpointing-steps N|epoch` writes `accelerator.save_state` directories OUTPUT_DIR/step_N (accelerate's format:
model in safetensors, optimizer/scheduler/RNG states with torch.save) through a temporary directory renamed into
place; `--resume-from-checkpoint PATH|latest` reloads one and skips the batches of the epoch already trained on.
OUTPUT_DIR/final holds the last weights, OUTPUT_DIR/metrics.json the per-epoch training loss and dev scores.
"""

import argparse
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup

from index_builder import BlockIndex
from modeling_realm import RealmForOpenQA, load_retriever, training
from modeling_realm.models import demo_model_path
from modeling_realm.openqa import collate_qa, evaluate_predictions, load_qa, openqa_from_retriever, training_batch
from tokenization import RealmTokenizerFast

logger = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", default=None, help="RealmForOpenQA directory or Hub id; or a RealmRetriever or BERT "
                      "checkpoint to start from (its query tower; the index must come from its block tower; "
                      "default: the demo MiniLM, as realm-build-index's default)")
    data.add_argument("--reader-model", default=None, help="BERT checkpoint the reader starts from when --model is "
                      "not a RealmForOpenQA (default: --model when it is a BERT, else the demo MiniLM)")
    data.add_argument("--projection", choices=["auto", "identity", "random"], default="auto",
                      help="a BERT --model's retrieval projection (as realm-build-index made the index with)")
    data.add_argument("--index", required=True, help="BlockIndex directory or Hub dataset id")
    data.add_argument("--tokenizer", default=None, help="tokenizer directory or Hub id (default: --model)")
    data.add_argument("--train-file", required=True, help="training questions: jsonl or saved datasets directory")
    data.add_argument("--dev-file", default=None, help="dev questions scored after every epoch (default: none)")
    data.add_argument("--question-field", default="question")
    data.add_argument("--answer-field", default="answer")
    data.add_argument("--match", choices=["string", "regex"], default="string",
                      help="answers are strings (exact match) or regular expressions (CuratedTREC)")
    data.add_argument("--max-train-samples", type=int, default=None)
    data.add_argument("--max-eval-samples", type=int, default=None)
    train = parser.add_argument_group("training")
    training.add_optimizer_arguments(train)
    train.add_argument("--output-dir", required=True)
    train.add_argument("--num-blocks", type=int, default=None,
                       help="blocks retrieved per question for the retriever loss (default config.searcher_beam_size)")
    train.add_argument("--comprehension-steps", type=int, default=None,
                       help="first optimizer steps of reading comprehension: the reader reads only the best-ranked "
                            "retrieved block that holds an answer (one block per question, 5x cheaper); default: "
                            "the first epoch for a new model (its reader starts from a BERT), 0 for a RealmForOpenQA")
    train.add_argument("--reader-beam-size", type=int, default=5, help="blocks read per question (a new model)")
    train.add_argument("--searcher-beam-size", type=int, default=32,
                       help="blocks retrieved per training question (a new model's config)")
    train.add_argument("--reader-seq-len", type=int, default=320, help="reader input length (a new model)")
    train.add_argument("--per-device-train-batch-size", type=int, default=16)
    train.add_argument("--per-device-eval-batch-size", type=int, default=8)
    train.add_argument("--learning-rate", type=float, default=None,
                       help="default: 1e-4 for a new model (measured with all-MiniLM-L6-v2 on SQuAD), 1e-5 (ORQA's) "
                            "to fine-tune a RealmForOpenQA")
    train.add_argument("--question-tower-learning-rate", type=float, default=None,
                       help="learning rate of the question tower (the retriever's query side; default: "
                            "--learning-rate); 0 freezes it")
    train.add_argument("--num-train-epochs", type=int, default=2)
    train.add_argument("--max-train-steps", type=int, default=None, help="optimizer steps; overrides the epochs")
    train.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warmup over this share of steps")
    run = parser.add_argument_group("checkpoints and logging")
    training.add_run_arguments(run)
    run.add_argument("--checkpointing-steps", default=None, help="save state every N optimizer steps, or 'epoch'")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "num_train_epochs", "logging_steps")
    for name in positive + ("max_train_steps", "num_blocks", "max_train_samples", "max_eval_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup-ratio must lie in [0, 1), got {args.warmup_ratio}.")
    if args.comprehension_steps is not None and args.comprehension_steps < 0:
        parser.error(f"--comprehension-steps must be >= 0, got {args.comprehension_steps}.")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}.")
    if args.question_tower_learning_rate is not None and not args.question_tower_learning_rate >= 0:
        parser.error(f"--question-tower-learning-rate must be >= 0, got {args.question_tower_learning_rate}.")
    steps = args.checkpointing_steps
    if steps is not None and steps != "epoch" and not (steps.isdigit() and int(steps) > 0):
        parser.error(f"--checkpointing-steps must be a positive integer or 'epoch', got {steps!r}.")


# ------------------------------------------------------------------------------------------------------ setup
def load_model(args, accelerator):
    """(model with the index attached, tokenizer, whether the model is new); the main process downloads first when
    ids are Hub ids. A new model is built from a BERT or retriever (`new_openqa_model`)."""
    with accelerator.main_process_first():
        index = BlockIndex.from_pretrained(args.index)
        model_path = args.model or demo_model_path()
        tokenizer = RealmTokenizerFast.from_pretrained(args.tokenizer or model_path)
        config = AutoConfig.from_pretrained(model_path)
        new_model = not (config.model_type == "realm" and "RealmForOpenQA" in (config.architectures or []))
        if new_model:
            model = new_openqa_model(args, model_path, config.model_type, index)
            model.tokenizer = tokenizer
        else:
            model = RealmForOpenQA.from_pretrained(model_path, index=index, tokenizer=tokenizer)
    logger.info("Model %s, index %r", model_path, index)
    return model, tokenizer, new_model


def new_openqa_model(args, model_path: str, model_type: str, index) -> RealmForOpenQA:
    """ORQA's start: the question tower of the retriever at `model_path`, a reader from a BERT."""
    # load_retriever's default seed, as realm-build-index used: the same (random parts of the) towers that built
    # the index, which check_compatible confirms through the block tower's fingerprint
    retriever = load_retriever(model_path, projection=args.projection)
    reader = args.reader_model or (model_path if model_type == "bert" else demo_model_path())
    return openqa_from_retriever(retriever, index, reader, reader_beam_size=args.reader_beam_size,
                                 searcher_beam_size=args.searcher_beam_size, reader_seq_len=args.reader_seq_len)


def fill_defaults(args, new_model: bool, per_epoch: int) -> None:
    """The learning rate and reading-comprehension steps the user left unset: a new model's reader starts from a
    BERT and learns to read first (one epoch of comprehension, lr 1e-4); a RealmForOpenQA continues ORQA's way."""
    if args.learning_rate is None:
        args.learning_rate = 1e-4 if new_model else 1e-5
    if args.comprehension_steps is None:
        args.comprehension_steps = per_epoch if new_model else 0
    logger.info("Learning rate %g; %d steps of reading comprehension first", args.learning_rate,
                args.comprehension_steps)


def make_optimizer(model, args):
    """AdamW; biases and normalisation weights (1-d parameters) get no weight decay; the question tower learns at
    --question-tower-learning-rate when given (0: frozen, its weights never change)."""
    tower = {id(p) for p in model.embedder.parameters()}
    tower_lr = args.learning_rate if args.question_tower_learning_rate is None else args.question_tower_learning_rate
    groups = []
    for in_tower, lr in ((False, args.learning_rate), (True, tower_lr)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in tower) == in_tower]
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=args.learning_rate)


def plan_steps(args, num_examples: int, num_processes: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total optimizer steps, epochs), as the prepared dataloader will run."""
    batches = math.ceil(num_examples / (args.per_device_train_batch_size * num_processes))
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    total = args.max_train_steps or per_epoch * args.num_train_epochs
    return per_epoch, total, math.ceil(total / per_epoch)


# ------------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(run):
    """Checkpoint the run into output_dir/step_N (all processes take part; see checkpoints.py)."""
    training.save_checkpoint(run.accelerator, Path(run.args.output_dir), {**run.state, "epoch_loss": epoch_loss(run)})


def save_model(run, directory: Path, metrics: dict):
    """save_pretrained of the unwrapped model + tokenizer (+ metrics.json) to `directory`, atomically."""
    model = run.accelerator.unwrap_model(run.model)
    training.save_trained(run.accelerator, directory, {"": model}, run.tokenizer, metrics)


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate(accelerator, model, examples: list[dict], args) -> dict:
    """Exact match (and F1) of `model.answer` on `examples`, in %; each process answers a slice of them."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    size = args.per_device_eval_batch_size
    with accelerator.split_between_processes(examples) as shard:
        predictions = []
        for start in tqdm(range(0, len(shard), size), desc="dev", disable=not accelerator.is_local_main_process):
            questions = [e["question"] for e in shard[start:start + size]]
            with accelerator.autocast():
                answers = unwrapped.answer(questions, top_k=1, batch_size=size)
            predictions.extend(answer["answer"] if answer else "" for answer in answers)
    predictions = gather_object(predictions)
    unwrapped.train()
    scores = evaluate_predictions(predictions, [e["answers"] for e in examples], match=args.match)
    return {f"dev_{name}": value for name, value in scores.items() if name != "count"}


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class Run:
    """What the training loop works on. `state` is JSON (saved with every checkpoint); `tally` is this process's
    [sum of batch losses, batches] for the current epoch."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DataLoader
    dev: list[dict]
    total_steps: int
    state: dict = field(default_factory=lambda: {"completed_steps": 0, "epoch": 0, "batches_done": 0, "best": None,
                                                 "history": []})
    tally: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    progress: object = None


def train_epoch(run: Run, batches):
    """Train on `batches` (the epoch's loader, less the batches a resumed checkpoint had done)."""
    accelerator, model, args, state = run.accelerator, run.model, run.args, run.state
    unwrapped = accelerator.unwrap_model(model)
    recent = []
    for batch in batches:
        with accelerator.accumulate(model):
            # Retrieval (no grad) with the plain model; the loss through the wrapped (e.g. DDP) model.
            inputs = reading_batch(run, unwrapped, batch)
            loss = model(**inputs).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        recent.append(loss.item())
        run.tally += torch.tensor([recent[-1], 1.0], dtype=torch.float64)
        state["batches_done"] += 1
        if accelerator.sync_gradients:
            state["completed_steps"] += 1
            run.progress.update(1)
            after_step(run, recent)
            if state["completed_steps"] >= run.total_steps:
                break


def reading_batch(run: Run, model, batch) -> dict:
    """The step's inputs: reading comprehension for the first --comprehension-steps steps, then ORQA's reading of
    the top retrieved blocks (also for a comprehension batch none of whose questions found an answer, so that every
    process still runs a forward and backward pass)."""
    args = run.args
    if run.state["completed_steps"] < args.comprehension_steps:
        inputs = training_batch(model, run.tokenizer, batch["questions"], batch["answers"], match=args.match,
                                num_blocks=args.num_blocks, read="answer_block")
        if inputs is not None:
            return inputs
    return training_batch(model, run.tokenizer, batch["questions"], batch["answers"], match=args.match,
                          num_blocks=args.num_blocks)


def after_step(run: Run, recent: list[float]):
    args, steps = run.args, run.state["completed_steps"]
    if steps % args.logging_steps == 0:
        window = recent[-args.logging_steps * args.gradient_accumulation_steps:]
        loss = sum(window) / len(window)
        run.progress.set_postfix(loss=f"{loss:.4f}")
        run.accelerator.log({"train/loss": loss, "train/learning_rate": run.scheduler.get_last_lr()[0]}, step=steps)
    if args.checkpointing_steps not in (None, "epoch") and steps % int(args.checkpointing_steps) == 0:
        save_checkpoint(run)


def epoch_loss(run: Run) -> list[float]:
    """[sum of losses, batches] of the epoch so far, over all processes (a collective call)."""
    return run.accelerator.reduce(run.tally.to(run.accelerator.device), reduction="sum").tolist()


def end_epoch(run: Run):
    """Score the dev set, keep the best model, record the epoch."""
    state, args = run.state, run.args
    total, batches = epoch_loss(run)
    record = {"epoch": state["epoch"], "step": state["completed_steps"],
              "train_loss": total / batches if batches else None}
    if run.dev:
        record.update(evaluate(run.accelerator, run.model, run.dev, args))
        if state["best"] is None or record["dev_exact_match"] > state["best"]["dev_exact_match"]:
            state["best"] = record
            save_model(run, Path(args.output_dir) / "best", record)
    logger.info("Epoch %d: %s", state["epoch"], record)
    run.accelerator.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, step=state["completed_steps"])
    state["history"].append(record)
    state["epoch"], state["batches_done"] = state["epoch"] + 1, 0
    run.tally.zero_()


def resume(run: Run, checkpoint: Path):
    """Reload the accelerator state and the loop's position; the epoch's loss so far goes to the main process."""
    run.accelerator.load_state(str(checkpoint))
    state = training.load_trainer_state(checkpoint)
    loss = state.pop("epoch_loss", [0.0, 0.0])
    if run.accelerator.is_main_process:
        run.tally = torch.tensor(loss, dtype=torch.float64)
    run.state = state
    logger.info("Resumed from %s: epoch %d, batch %d, step %d", checkpoint, state["epoch"], state["batches_done"],
                state["completed_steps"])


def setup(args) -> Run:
    # The index holds the block embeddings, so block_emb (a buffer) never changes: no need to broadcast buffers.
    # The embedder and reader keep google's unused MLM heads (and the reader its pooler): find_unused_parameters.
    accelerator = training.make_accelerator(args, [DistributedDataParallelKwargs(find_unused_parameters=True,
                                                                        broadcast_buffers=False)])
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(args.seed)
    train = load_qa(args.train_file, args.question_field, args.answer_field, args.match)[:args.max_train_samples]
    dev = load_qa(args.dev_file, args.question_field, args.answer_field, args.match)[:args.max_eval_samples] \
        if args.dev_file else []
    model, tokenizer, new_model = load_model(args, accelerator)
    model.train()
    per_epoch, total_steps, epochs = plan_steps(args, len(train), accelerator.num_processes)
    fill_defaults(args, new_model=new_model, per_epoch=per_epoch)
    optimizer = make_optimizer(model, args)
    # A prepared scheduler steps once per process per optimizer step, hence the factor.
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(args.warmup_ratio * total_steps) * accelerator.num_processes,
        total_steps * accelerator.num_processes)
    loader = DataLoader(train, batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collate_qa)
    with warnings.catch_warnings():  # broadcast_buffers=False is deprecated in torch, but is the flag that also
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)  # skips the init sync
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    logger.info("%d training questions, %d dev questions; %d epochs of %d optimizer steps (%d in all), %d processes",
                len(train), len(dev), epochs, per_epoch, total_steps, accelerator.num_processes)
    return Run(args, accelerator, model, tokenizer, optimizer, scheduler, loader, dev, total_steps)


def main(argv=None) -> dict:
    """Run the fine-tuning; returns the metrics also written to OUTPUT_DIR/metrics.json."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    checkpoint = training.checkpoint_to_resume(output_dir, args.resume_from_checkpoint)
    run = setup(args)
    run.accelerator.init_trackers("finetune_openqa", config={k: v for k, v in vars(args).items()
                                                            if isinstance(v, (int, float, str, bool))})
    if checkpoint is not None:
        resume(run, checkpoint)
    state = run.state
    run.progress = tqdm(total=run.total_steps, initial=state["completed_steps"], desc="train",
                        disable=not run.accelerator.is_local_main_process)
    while state["completed_steps"] < run.total_steps:
        run.loader.set_epoch(state["epoch"])  # the shuffle depends on (seed, epoch) only: a resumed run sees the same
        train_epoch(run, training.batches_left(run.accelerator, run.loader, run.state["batches_done"]))
        end_epoch(run)
        if args.checkpointing_steps == "epoch":
            save_checkpoint(run)
    run.progress.close()
    metrics = {"completed_steps": state["completed_steps"], "best": state["best"], "history": state["history"]}
    save_model(run, output_dir / "final", metrics)
    if run.accelerator.is_main_process:
        training.write_json(output_dir / "metrics.json", metrics)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()  # also ends the process group
    best = state["best"]
    run.accelerator.print(f"trained {state['completed_steps']} steps; " + (
        f"best dev exact match {best['dev_exact_match']:.2f} (epoch {best['epoch']}) in {output_dir / 'best'}"
        if best else f"no dev file; final model in {output_dir / 'final'}"))
    return metrics


if __name__ == "__main__":
    main()
