"""Training checkpoints of the training scripts (examples/pretrain_ict.py, pretrain_realm.py, finetune_openqa.py).

A checkpoint is OUTPUT_DIR/step_N: accelerate's `save_state` (weights, optimizer, scheduler, RNG) plus
`trainer_state.json` (the script's JSON state: data position, metrics window, index version...). It is written into
a hidden staging directory and renamed into place only when complete, so a process killed at any moment leaves
either the previous checkpoints alone or the new one complete; `latest` never picks a half-written one. A staging
directory left by a killed run is removed by the next save of the same step.
"""

import json
import logging
import re
import shutil
from pathlib import Path

from tokenization.storage import atomic_directory, atomic_write_bytes, replace_directory

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
CHECKPOINT = re.compile(r"^step_(\d+)$")


def checkpoint_to_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The step_N directory `--resume-from-checkpoint` names: a path, or 'latest' (the highest N in output_dir);
    None when it names none (a fresh run)."""
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint of this script (no {STATE_FILE}); pass a step_N "
                                    f"directory written with --checkpointing-steps, or 'latest'.")
        return path
    found = [p for p in Path(output_dir).glob("step_*") if CHECKPOINT.match(p.name) and (p / STATE_FILE).is_file()]
    if not found:
        raise FileNotFoundError(f"--resume-from-checkpoint latest: no step_N checkpoint in {output_dir}; train with "
                                "--checkpointing-steps first or leave the flag out.")
    return max(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def save_checkpoint(accelerator, output_dir: Path, state: dict) -> Path:
    """`save_state` into a staging directory, then rename it to output_dir/step_{completed_steps} (all processes
    call this; the main process writes `state` and renames)."""
    final = Path(output_dir) / f"step_{state['completed_steps']}"
    staging = final.parent / f".{final.name}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(staging / STATE_FILE, state)
        replace_directory(staging, final)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def batches_left(accelerator, loader, batches_done: int):
    """`loader` without the batches of this epoch that a resumed checkpoint already trained on (`batches_done`)."""
    if batches_done == 0:
        return loader
    return [] if batches_done >= len(loader) else accelerator.skip_first_batches(loader, batches_done)


def load_trainer_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def write_json(path: Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2).encode())


def save_trained(accelerator, directory, models: dict, tokenizer, metrics: dict) -> None:
    """Write trained models into `directory` atomically: on the main process, `save_pretrained` of each model (with
    the tokenizer) into `directory/name` (`directory` itself for the name ""), and `metrics.json`; every process waits.
    `models` maps names to unwrapped models (`accelerator.unwrap_model(...)`)."""
    if accelerator.is_main_process:
        with atomic_directory(directory, overwrite=True) as staging:
            for name, model in models.items():
                model.save_pretrained(staging / name if name else staging, tokenizer=tokenizer)
            write_json(staging / "metrics.json", metrics)
    accelerator.wait_for_everyone()
