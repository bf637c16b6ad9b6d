"""Saving the block tower for the asynchronous index refresh without pausing training.

The refresh worker needs the block tower as it was at the step the refresh fell due, on disk. Saving a BERT-base
tower takes about a second; the trainer only has to wait for the weights to be *copied*, and not even that if the
copy runs while the next step computes its forward and backward passes (the weights only change in the optimizer
step). `TowerSnapshot` copies the weights (in a background thread, or at once) and saves the copy with the
tokenizer through `atomic_directory`, in that thread; `IndexRefresher` waits for the copy in an optimizer step
pre-hook and starts the worker once the save is done.
"""

import threading
import time
from pathlib import Path

import torch

from tokenization.storage import atomic_directory


def copy_state(embedder) -> dict[str, torch.Tensor]:
    """A CPU copy of every tensor of `embedder`'s state dict (tied tensors stay tied: copied once)."""
    copies = {}
    state = {}
    for name, tensor in embedder.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True)
        state[name] = copies[key]
    return state


class TowerSnapshot:
    """Copy `embedder`'s weights and save them with `tokenizer` to `directory`, off the training thread.

    Args:
        embedder: the block tower (a `RealmEmbedder`).
        tokenizer: saved next to it (the worker loads both from `directory`).
        directory: where the tower appears, complete or not at all.
        copy_now: copy the weights before returning (the caller may change them right after); otherwise the
            background thread copies them and `wait_for_copy` must be called before the weights change.
    """

    def __init__(self, embedder, tokenizer, directory, copy_now: bool = True):
        self.directory = Path(directory)
        self.error: BaseException | None = None
        self._copied = threading.Event()
        state = None
        if copy_now:
            state = copy_state(embedder)
            self._copied.set()
        self._thread = threading.Thread(target=self._run, args=(embedder, tokenizer, state), daemon=True,
                                        name="realm-tower-snapshot")
        self._thread.start()

    def _run(self, embedder, tokenizer, state) -> None:
        try:
            if state is None:
                state = copy_state(embedder)
                self._copied.set()
            with atomic_directory(self.directory, overwrite=True) as staging:
                embedder.save_pretrained(staging, state_dict=state, model_card=False)
                tokenizer.save_pretrained(staging)
        except Exception as error:  # kept for the refresher, which logs it and counts a failed refresh
            self.error = error
        finally:
            self._copied.set()

    def wait_for_copy(self) -> float:
        """Block until the weights are copied; returns the seconds waited (0 when the copy was already done)."""
        if self._copied.is_set():
            return 0.0
        started = time.perf_counter()
        self._copied.wait()
        return time.perf_counter() - started

    @property
    def done(self) -> bool:
        """The snapshot is on disk (or failed: see `error`)."""
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()
