"""What the training scripts share (`examples/pretrain_ict.py`, `pretrain_realm.py`, `finetune_openqa.py`): their
common arguments, the Accelerator, step_N checkpoints that a killed run resumes from, and the final save."""

from modeling_realm.training.accelerator import make_accelerator
from modeling_realm.training.arguments import add_optimizer_arguments, add_run_arguments
from modeling_realm.training.checkpoints import (
    batches_left,
    checkpoint_to_resume,
    load_trainer_state,
    save_checkpoint,
    save_trained,
    write_json,
)

__all__ = ["add_optimizer_arguments", "add_run_arguments", "batches_left", "checkpoint_to_resume", "load_trainer_state",
           "make_accelerator", "save_checkpoint", "save_trained", "write_json"]
