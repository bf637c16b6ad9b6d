"""Command-line arguments every training script takes (pretrain_ict, pretrain_realm, finetune_openqa); each script
adds its own (data, batch sizes, learning rate, schedule) around them."""


def add_optimizer_arguments(group) -> None:
    """Gradient accumulation, weight decay, clipping, precision, seed and the CPU switch, into an argparse group."""
    group.add_argument("--gradient-accumulation-steps", type=int, default=1)
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    group.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                       help="default: accelerate config / launch flag")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--cpu", action="store_true",
                       help="train on CPU even with an accelerator (needed for several CPU processes under torchrun)")


def add_run_arguments(group) -> None:
    """Resuming, logging and the tracker, into an argparse group (the script adds --checkpointing-steps)."""
    group.add_argument("--resume-from-checkpoint", default=None, help="a step_N directory, or 'latest' in output-dir")
    group.add_argument("--logging-steps", type=int, default=10)
    group.add_argument("--report-to", default="none", help="tracker for accelerator.init_trackers: tensorboard, "
                       "wandb, all, ... (default none)")
