"""Keeping the index of REALM pretraining fresh: the block tower changes every step, the index's embeddings do not.

`IndexRefresher` owns the index the trainer retrieves from and offers four modes (the training loop decides when to
call it, as in Atlas; the library only rebuilds and swaps):

- `"none"`: the index is never rebuilt (its staleness grows; REALM's "no refresh" ablation).
- `"sync"`: every `every` steps training pauses, every process encodes its share of the blocks with the current block
  tower (`build_index`), and the new index replaces the old one before the next step. Deterministic: a resumed run
  continues exactly as the uninterrupted one.
- `"async"` (REALM's recipe): every `every` steps the main process snapshots the block tower (`TowerSnapshot`: the
  weights are copied while the next step computes, when the refresher knows the optimizer, and saved by a background
  thread into a directory renamed into place) and then starts a separate worker process (`python -m
  modeling_realm.pretraining.refresh`) that re-encodes the blocks with it into a new version directory
  (`atomic_directory`: complete or absent) and then points the `latest` file (written atomically) at it. Between steps
  the trainer only reads that small file (`after_step`); when it names a newer version, the new index is loaded by a
  background thread (`IndexLoad`) and swapped in at the first step after it is loaded. Training never waits for the
  worker. A worker that fails is logged with the end of its log and training goes on with the old index. A refresh that
  falls due while the worker is busy starts as soon as it finishes, with the newest block tower (REALM's refresher also
  ran back to back).
- `"rerank"`: no rebuild; each query retrieves `rerank_factor * k` blocks from the stale index, those blocks are
  re-embedded with the current block tower and the best k under the current towers are kept.

Layout of `work_dir` (default OUTPUT_DIR/index_versions in `examples/pretrain_realm.py`): `v000001/`, `v000002/` ...
(BlockIndex directories), `latest.json` (`{"version", "directory", "step"}`), `towers/step_N/` (block towers waiting
for a worker) and `worker-vN.log`. Version 0 is the index the run started from; only the newest `keep_versions`
versions are kept. A fresh run ignores versions an earlier run left in `work_dir`; a resumed run returns to its
checkpoint's version (and in async mode takes any newer version the killed run finished).

Placement: the worker runs on `device` ("cpu", "cuda", "cuda:3"...) with `worker_env` added to its environment. With
several GPUs, leave one out of training (e.g. `accelerate launch --gpu_ids 0,1,2` and `device="cuda:3"`, or
`worker_env={"CUDA_VISIBLE_DEVICES": "3"}` with `device="cuda"`) so refreshing does not slow the trainers; on one GPU
it shares the trainer's GPU (slower steps, no waiting). Under several training processes only the main process
launches workers and reads `latest.json`; it broadcasts the version to load, every process loads it in the
background, and they swap at the first step at which all of them have it (one gather of a number per step while a
load is under way; if any process fails to load it, none swaps).
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from index_builder.encoding.build import build_index
from index_builder.index.block_index import BlockIndex
from index_builder.index.blocks_table import TEXT_COLUMNS
from modeling_realm.pretraining.index_load import IndexLoad
from modeling_realm.pretraining.realm import embed_blocks_now
from modeling_realm.pretraining.tower_snapshot import TowerSnapshot
from modeling_realm.retrieval import RetrievedBlocks, retrieve_blocks
from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN
from tokenization.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

MODES = ("none", "sync", "async", "rerank")
DEFAULT_REFRESH_EVERY = 500  # REALM: about every 500 steps (ARCHITECTURE.md, the REALM recipe)
DEFAULT_RERANK_FACTOR = 4
LATEST = "latest.json"
LOG_TAIL = 2000
LOADING, FAILED, LOADED = 0, 1, 2  # a refreshed version's load, as the processes agree on it


class IndexRefresher:
    """The index REALM pretraining retrieves from, and its refresh (modes in the module docstring).

    Args:
        index (`BlockIndex`): version 0, built with the initial block tower (async mode needs it on disk).
        retriever (`RealmRetriever`): the model being trained (unwrapped), whose block tower refreshes the index.
        tokenizer: its tokenizer (saved with the block tower for the async worker).
        work_dir: where versions, `latest.json`, towers and worker logs go (needed unless mode is "none"/"rerank").
        mode, every: refresh mode and interval in optimizer steps.
        rerank_factor: candidates per kept block in "rerank" mode.
        block_length, batch_size, mixed_precision: encoding settings (as `build_index`).
        accelerator: the trainer's `accelerate.Accelerator` when several processes train (None for one).
        device, worker_env: where the async worker encodes, and extra environment variables for it.
        keep_versions: how many version directories to keep (older ones are deleted after a swap).
        optimizer: the trainer's optimizer (async mode): the block tower's weights are then copied for the worker
            while the next step computes, and its `step` waits for the copy (normally long finished; the seconds
            waited add up in `wait_seconds`). Without it the copy is taken inside `after_step`.
    """

    def __init__(self, index: BlockIndex, retriever, tokenizer, work_dir=None, mode: str = "async",
                 every: int = DEFAULT_REFRESH_EVERY, rerank_factor: int = DEFAULT_RERANK_FACTOR,
                 block_length: int = DEFAULT_BLOCK_SEQ_LEN, batch_size: int = 64, mixed_precision: str = "no",
                 accelerator=None, device: str | None = None, worker_env: dict | None = None, keep_versions: int = 2,
                 optimizer=None):
        if mode not in MODES:
            raise ValueError(f"refresh mode {mode!r} is not one of {MODES}.")
        if every < 1 or rerank_factor < 1 or keep_versions < 1:
            raise ValueError(f"every ({every}), rerank_factor ({rerank_factor}) and keep_versions ({keep_versions}) "
                             "must all be >= 1.")
        if mode in ("sync", "async") and work_dir is None:
            raise ValueError(f"refresh mode {mode!r} writes new index versions: pass work_dir.")
        if mode == "async" and index.directory is None:
            raise ValueError("The async refresh worker reads the blocks from disk, but this index is in memory only; "
                             "save it first (index.save_to_disk(dir)) or use mode='sync'.")
        self.index, self.retriever, self.tokenizer, self.mode, self.every = index, retriever, tokenizer, mode, every
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.rerank_factor, self.block_length, self.batch_size = rerank_factor, block_length, batch_size
        self.mixed_precision, self.accelerator, self.keep_versions = mixed_precision, accelerator, keep_versions
        self.device = device or ("cuda" if next(retriever.parameters()).is_cuda else "cpu")
        self.worker_env = dict(worker_env or {})
        self.source = index.directory  # the blocks of every version
        self.version, self.index_step, self.refreshes, self.failures = 0, 0, 0, 0
        self.pending = None  # the step of a due async refresh that waits for the busy worker
        self._worker = None  # (Popen, version, step, tower directory, log path)
        self._snapshot = None  # (TowerSnapshot, version, step) being saved for the next worker
        self._loading = None  # IndexLoad of a finished version, loading in the background
        self.wait_seconds = 0.0  # optimizer steps spent waiting for a snapshot's copy
        self._hook = None
        if mode == "async" and optimizer is not None and self._is_main:
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
            self._hook = inner.register_step_pre_hook(self._before_optimizer_step)
        self._largest_document = _largest_document(index) if mode == "rerank" else 0
        self._protected = None  # the version the last checkpoint names: never deleted
        self._floor = 0  # versions up to this one are not swapped in (another run's leftovers)
        if self.work_dir is not None and self._is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            leftover = read_latest(self.work_dir)
            if leftover is not None and mode == "async":
                self._floor = leftover["version"]
                logger.warning("%s holds index versions up to %d from an earlier run; they are ignored (a resumed "
                               "run takes them back from its checkpoint).", self.work_dir, self._floor)

    # ------------------------------------------------------------------------------------------ trainer API
    def staleness(self, step: int) -> int:
        """Optimizer steps since the block tower that embedded the current index."""
        return step - self.index_step

    def retrieve(self, query_embeddings, num_blocks: int, exclude_doc_ids=None):
        """`retrieve_blocks` on the current index; in "rerank" mode, re-scored with the current block tower."""
        if self.mode != "rerank":
            return retrieve_blocks(self.index, query_embeddings, num_blocks, exclude_doc_ids)
        wide = max(num_blocks, min(num_blocks * self.rerank_factor, len(self.index) - self._largest_document))
        found = retrieve_blocks(self.index, query_embeddings, wide, exclude_doc_ids)
        return self.rerank(query_embeddings, found, num_blocks)

    def rerank(self, query_embeddings, found, num_blocks: int):
        """The best `num_blocks` of `found` (`RetrievedBlocks` `[b, n]`) by the current towers' scores."""
        batch, wide = found.block_ids.shape
        flat = [block for row in found.blocks for block in row]
        # [b, n, proj]
        current = embed_blocks_now(self.retriever, self.tokenizer, flat, self.block_length,
                                   self.batch_size).view(batch, wide, -1).cpu()
        queries = torch.as_tensor(np.asarray(query_embeddings, dtype=np.float32))
        # [b, n]
        scores = torch.einsum("bd,bnd->bn", queries, current).numpy()
        order = np.argsort(-scores, axis=1, kind="stable")[:, :num_blocks]
        blocks = [[row[j] for j in keep] for row, keep in zip(found.blocks, order)]
        return RetrievedBlocks(np.take_along_axis(found.block_ids, order, axis=1),
                               np.take_along_axis(scores, order, axis=1).astype(np.float32), blocks)

    def after_step(self, step: int) -> bool:
        """Call after every optimizer step, on every process. Refreshes when due (sync: now; async: starts a worker)
        and swaps in any newer finished version. Returns True when the index changed."""
        due = self.mode in ("sync", "async") and step % self.every == 0
        if self.mode == "sync":
            if due:
                self.refresh_now(step)
                return True
            return False
        if self.mode != "async":
            return False
        if due and self._is_main:
            self.pending = step
        latest = self._poll() if self._is_main else None
        return self._swap_when_loaded(self._broadcast(latest))

    def refresh_now(self, step: int, version: int | None = None) -> None:
        """Rebuild the index with the current block tower (every process takes part) and swap it in as `version`
        (default: the next one)."""
        version = self.version + 1 if version is None else version
        directory = self._version_dir(version)
        started = time.perf_counter()
        training = self.retriever.training
        try:
            index = build_index(self._blocks(), self.retriever, self.tokenizer, directory,
                                factory=self.index.factory, work_dir=self._encoding_dir(version),
                                batch_size=self.batch_size, max_length=self.block_length,
                                accelerator=self.accelerator, mixed_precision=self.mixed_precision,
                                search_params=dict(self.index.manifest.search_params), overwrite=True, progress=False)
        finally:
            self.retriever.train(training)  # encoding switched the block tower to eval mode
        if self._is_main:
            write_latest(self.work_dir, version, directory.name, step)
        self._install(index, version, step)
        self.refreshes += 1
        logger.info("Index refreshed synchronously at step %d in %.1fs (version %d)", step,
                    time.perf_counter() - started, version)

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume with the same index (JSON). The version it names is kept on disk (not
        cleaned up) until the next `state_dict` call, so the newest checkpoint can always be resumed."""
        self._protected = self.version
        started = self._worker or self._snapshot  # a killed worker (or snapshot) restarts on resume
        return {"mode": self.mode, "version": self.version, "index_step": self.index_step,
                "directory": None if self.index.directory is None else str(self.index.directory),
                "pending": self.pending if started is None else started[2],
                "refreshes": self.refreshes, "failures": self.failures}

    def load_state_dict(self, state: dict, step: int) -> None:
        """Return to the index version a checkpoint (at `step`) used. If that version was deleted since, the index
        is rebuilt now with the current block tower (logged)."""
        self.refreshes, self.failures = state.get("refreshes", 0), state.get("failures", 0)
        self._floor = self._protected = state["version"]  # a killed run's newer versions may be swapped in (async)
        self.pending = state.get("pending") if self.mode == "async" else None
        directory = state.get("directory")
        if state["version"] == self.version and directory == (None if self.index.directory is None
                                                              else str(self.index.directory)):
            self.index_step = state["index_step"]
            return
        if directory is not None and Path(directory).is_dir():
            self._install(BlockIndex.load_from_disk(directory, verify=False), state["version"], state["index_step"])
            return
        if self.mode == "none" or self.work_dir is None:
            raise FileNotFoundError(f"The checkpoint's index {directory} is missing and refresh mode {self.mode!r} "
                                    "cannot rebuild it; pass the index it was trained with.")
        logger.warning("The checkpoint's index version %d (%s, block tower of step %d) no longer exists; rebuilding "
                       "it with the block tower of step %d.", state["version"], directory, state["index_step"], step)
        self.refresh_now(step, version=state["version"])

    def close(self, wait: bool = False) -> None:
        """Stop (or, with `wait`, finish) a running worker; call at the end of training."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._snapshot is not None:
            self._snapshot[0].join()
            if wait:
                self._start_worker()
            else:
                shutil.rmtree(self._snapshot[0].directory, ignore_errors=True)
                self._snapshot = None
        if self._worker is None:
            return
        process = self._worker[0]
        if wait:
            process.wait()
        elif process.poll() is None:
            logger.info("Stopping the index refresh worker (version %d) at the end of training.", self._worker[1])
            process.terminate()
            process.wait()
            for partial in self.work_dir.glob(f".v{self._worker[1]:06d}.*"):  # its staging and encoding directories
                shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(self._worker[3], ignore_errors=True)
        self._worker = None

    # ------------------------------------------------------------------------------------------ async internals
    def _poll(self) -> dict | None:
        """Main process: reap a finished worker, start a pending one, and return `latest.json` (None if absent)."""
        if self._worker is not None and self._worker[0].poll() is not None:
            self._reap()
        if self._snapshot is not None and self._snapshot[0].done:
            self._start_worker()
        if self._worker is None and self._snapshot is None and self.pending is not None:
            self._launch(self.pending)
        return read_latest(self.work_dir)

    def _launch(self, step: int) -> None:
        """Snapshot the block tower for version `step`'s worker (started by `_poll` once the snapshot is saved)."""
        version = max(self.version, (read_latest(self.work_dir) or {}).get("version", 0)) + 1
        tower = self.work_dir / "towers" / f"step_{step}"
        snapshot = TowerSnapshot(self.retriever.embedder, self.tokenizer, tower, copy_now=self._hook is None)
        self._snapshot, self.pending = (snapshot, version, step), None

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._snapshot is not None:
            self.wait_seconds += self._snapshot[0].wait_for_copy()

    def _start_worker(self) -> None:
        snapshot, version, step = self._snapshot
        self._snapshot = None
        tower = snapshot.directory
        if snapshot.error is not None:
            self.failures += 1
            shutil.rmtree(tower, ignore_errors=True)
            logger.error("Could not save the block tower of step %d for index refresh %d (%s: %s); training "
                         "continues on index version %d.", step, version, type(snapshot.error).__name__,
                         snapshot.error, self.version)
            return
        log = self.work_dir / f"worker-v{version}.log"
        command = [sys.executable, "-m", "modeling_realm.pretraining.refresh", "--tower", str(tower),
                   "--source", str(self.source),
                   "--work-dir", str(self.work_dir), "--version", str(version), "--step", str(step),
                   "--device", self.device, "--batch-size", str(self.batch_size), "--max-length",
                   str(self.block_length), "--mixed-precision", self.mixed_precision]
        with open(log, "w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                       env={**os.environ, **self.worker_env})
        self._worker = (process, version, step, tower, log)
        logger.info("Index refresh worker started (pid %d): version %d from the block tower of step %d", process.pid,
                    version, step)

    def _reap(self) -> None:
        process, version, step, tower, log = self._worker
        self._worker = None
        shutil.rmtree(tower, ignore_errors=True)
        if process.returncode == 0:
            return
        self.failures += 1
        tail = log.read_text(errors="replace")[-LOG_TAIL:] if log.exists() else "(no log)"
        logger.error("Index refresh %d (block tower of step %d) failed with exit code %d; training continues on index "
                     "version %d. End of %s:\n%s", version, step, process.returncode, self.version, log, tail)

    def _swap_when_loaded(self, pointer: dict | None) -> bool:
        """Load a newer version in the background and swap it in once loaded, never waiting for the load. With
        several processes every one loads it and they swap at the first step at which all have it."""
        if self._loading is None and pointer is not None and pointer["version"] > max(self.version, self._floor):
            self._loading = IndexLoad(self.work_dir / pointer["directory"], pointer)
        if self._loading is None:
            return False
        state = self._agree(self._loading)
        if state == LOADING:
            return False
        load, self._loading = self._loading, None
        if state == FAILED and load.error is None:  # loaded here, not on another process: nobody swaps
            load.error = RuntimeError("another training process could not load it")
        return self._install_loaded(load)

    def _agree(self, load: IndexLoad) -> int:
        """The least advanced state of this load over all processes (LOADING < FAILED < LOADED)."""
        state = LOADING if not load.done else FAILED if load.error is not None else LOADED
        if self._single_process:
            return state
        # [num_processes]: one small gather per step, only while a load is under way
        states = self.accelerator.gather(torch.tensor([state], device=self.accelerator.device))
        return int(states.min())

    def _install_loaded(self, load: IndexLoad) -> bool:
        if load.error is not None:
            self.failures += 1
            self._floor = max(self._floor, load.pointer["version"])  # not tried again; a newer version will be
            logger.error("Could not load refreshed index %s (%s); training continues on version %d.",
                         load.directory, load.error, self.version)
            return False
        self._install(load.index, load.pointer["version"], load.pointer["step"])
        self.refreshes += 1
        logger.info("Swapped in index version %d (block tower of step %d), loaded in %.2fs",
                    load.pointer["version"], load.pointer["step"], load.seconds)
        return True

    def _install(self, index: BlockIndex, version: int, step: int) -> None:
        self.index, self.version, self.index_step = index, version, step
        if self._is_main and self.work_dir is not None:
            for old in self.work_dir.glob("v[0-9]*"):
                number = int(old.name[1:]) if old.name[1:].isdigit() else None
                if old.is_dir() and number is not None and number <= version - self.keep_versions \
                        and number != self._protected:
                    shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def _is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def _single_process(self) -> bool:
        return self.accelerator is None or self.accelerator.num_processes == 1

    def _broadcast(self, value):
        if self._single_process:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def _blocks(self):
        return self.index.blocks.select_columns(TEXT_COLUMNS)

    def _version_dir(self, version: int) -> Path:
        return self.work_dir / f"v{version:06d}"

    def _encoding_dir(self, version: int) -> Path:
        """A fresh encoding work directory (leftovers of a killed build used another block tower)."""
        directory = self.work_dir / f".v{version:06d}.encoding"
        if self._is_main:
            shutil.rmtree(directory, ignore_errors=True)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return directory


def _largest_document(index) -> int:
    """Blocks in the largest document (how many a query's own document can remove from a search)."""
    blocks = getattr(index, "blocks", None)
    if blocks is None or "doc_id" not in blocks.column_names:
        return 0
    return max(Counter(blocks["doc_id"]).values(), default=0)


def read_latest(work_dir) -> dict | None:
    """The `latest.json` pointer of a versions directory, or None (absent or unreadable, which is logged)."""
    path = Path(work_dir) / LATEST
    if not path.exists():
        return None
    try:
        pointer = json.loads(path.read_text())
        return {"version": int(pointer["version"]), "directory": str(pointer["directory"]),
                "step": int(pointer["step"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Ignoring unreadable %s: %s", path, error)
        return None


def write_latest(work_dir, version: int, directory: str, step: int) -> None:
    """Point `latest.json` at a version directory (a temporary file renamed into place)."""
    record = {"version": version, "directory": directory, "step": step, "created": time.time()}
    atomic_write_bytes(Path(work_dir) / LATEST, (json.dumps(record) + "\n").encode())


# ---------------------------------------------------------------------------------------------- worker process
def refresh_worker(tower, source, work_dir, version: int, step: int, device: str = "cpu", batch_size: int = 64,
                   max_length: int = DEFAULT_BLOCK_SEQ_LEN, mixed_precision: str = "no") -> Path:
    """Encode the blocks of the index at `source` with the block tower saved at `tower`, write version `version`
    into `work_dir`, then point `latest.json` at it. Returns the version directory."""
    from transformers import AutoTokenizer

    from modeling_realm.models import RealmEmbedder

    work_dir = Path(work_dir)
    embedder = RealmEmbedder.from_pretrained(tower).to(device)
    tokenizer = AutoTokenizer.from_pretrained(tower)
    previous = BlockIndex.load_from_disk(source, verify=False)
    directory = work_dir / f"v{version:06d}"
    encoding = work_dir / f".v{version:06d}.encoding"
    shutil.rmtree(encoding, ignore_errors=True)
    build_index(previous.blocks.select_columns(TEXT_COLUMNS), embedder, tokenizer, directory,
                factory=previous.factory, work_dir=encoding, batch_size=batch_size, max_length=max_length,
                mixed_precision=mixed_precision, embedder_name=f"block tower of step {step}",
                search_params=dict(previous.manifest.search_params), overwrite=True, progress=False)
    latest = read_latest(work_dir)
    if latest is None or latest["version"] < version:
        write_latest(work_dir, version, directory.name, step)
    return directory


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Index refresh worker of REALM pretraining (started by "
                                                 "IndexRefresher in async mode).")
    parser.add_argument("--tower", required=True, help="saved block tower (RealmEmbedder) and tokenizer")
    parser.add_argument("--source", required=True, help="a BlockIndex directory whose blocks are encoded")
    parser.add_argument("--work-dir", required=True, help="the versions directory")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=DEFAULT_BLOCK_SEQ_LEN)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.perf_counter()
    directory = refresh_worker(args.tower, args.source, args.work_dir, args.version, args.step, args.device,
                               args.batch_size, args.max_length, args.mixed_precision)
    logger.info("Wrote %s in %.1fs", directory, time.perf_counter() - started)


if __name__ == "__main__":
    main()
