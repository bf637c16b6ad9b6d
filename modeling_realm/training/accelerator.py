"""The `accelerate.Accelerator` of the training scripts, refused early when it would not train as launched."""

import os

from accelerate import Accelerator, DataLoaderConfiguration


def make_accelerator(args, kwargs_handlers=()) -> Accelerator:
    """An Accelerator from the arguments of `add_run_arguments`/`add_optimizer_arguments` (+ `output_dir`), with
    seedable samplers (resumed runs see the same batches). Raises ValueError when several processes were launched but
    accelerate set up one (each would train alone), or when the tracker of `--report-to` is not installed."""
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu,
                              mixed_precision=args.mixed_precision, project_dir=args.output_dir,
                              log_with=None if args.report_to == "none" else args.report_to,
                              kwargs_handlers=list(kwargs_handlers),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise ValueError(f"Launched as {world_size} processes but accelerate set up a single-process run (so each "
                         "process would train alone); on CPU pass --cpu (or `accelerate launch --cpu`).")
    if args.report_to != "none" and not accelerator.log_with:
        raise ValueError(f"--report-to {args.report_to}: no such tracker is installed; install it (e.g. pip install "
                         "tensorboard) or pass --report-to none.")
    return accelerator
