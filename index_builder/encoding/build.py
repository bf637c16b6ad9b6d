"""Blocks + a retriever -> a BlockIndex directory: encode (resumable, sharded), then index and save atomically."""

import contextlib
import logging
from pathlib import Path

from index_builder.encoding.agreement import SAMPLE_SIZE, encoding_record
from index_builder.encoding.encode import DEFAULT_CHUNK_SIZE, encode_blocks
from index_builder.index.block_index import BlockIndex
from tokenization.storage import exclusive_lock, recover_directory

logger = logging.getLogger(__name__)


def default_work_dir(output_dir) -> Path:
    """Where the embeddings of an index being built wait: a hidden sibling of the output directory."""
    output_dir = Path(output_dir)
    return output_dir.parent / f".{output_dir.name}.encoding"


def build_index(blocks, model, tokenizer, output_dir, factory: str = "Flat", work_dir=None, batch_size: int = 64,
                max_length: int = 512, chunk_size: int = DEFAULT_CHUNK_SIZE, accelerator=None,
                mixed_precision: str = "no", embedder_name: str | None = None, search_params: dict | None = None,
                overwrite: bool = False, keep_embeddings: bool = False, progress: bool = True,
                lexical=None, dtype: str = "float32", agreement_sample: int = SAMPLE_SIZE) -> BlockIndex:
    """Encode `blocks` with the block tower of `model` and write a BlockIndex to `output_dir` (with a lexical part
    when `lexical` is "bm25" or a `LexicalSettings`).

    Run the same call again after a crash: finished chunks of embeddings in `work_dir` are reused. With an
    accelerator, every process encodes its share and the main process builds the index; all processes return it.
    `blocks` needs `title` and `text` columns; `block_id` (default: row number) and `doc_id` (default: block id)
    are added when absent.

    `dtype` ("float32", "bfloat16", "float16" on a GPU) and `mixed_precision` are as in `encode_blocks`. When either
    reduces precision, up to `agreement_sample` blocks are also encoded in float32 and the agreement of the two
    (cosines and top-5 retrieval agreement, defined in `agreement.py`) is logged and recorded in the manifest's
    `encoding` field; a float32 build records nothing there.
    """
    output_dir = Path(output_dir)
    is_main = accelerator is None or accelerator.is_main_process
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(output_dir)
    if is_main:
        recover_directory(output_dir)
        _check_output(output_dir, overwrite)
    with _build_lock(work_dir, output_dir, is_main):
        blocks = with_block_ids(blocks)
        embeddings = encode_blocks(blocks, model, tokenizer, work_dir, batch_size=batch_size, max_length=max_length,
                                   chunk_size=chunk_size, accelerator=accelerator, mixed_precision=mixed_precision,
                                   dtype=dtype, progress=progress)
        if is_main:
            precision = embeddings.plan.precision
            record = encoding_record(blocks, model, tokenizer, embeddings, precision, batch_size, max_length,
                                     agreement_sample) if precision.reduced else None
            BlockIndex.build(blocks, embeddings, output_dir, factory=factory, embedder=model,
                             embedder_name=embedder_name, search_params=search_params, overwrite=overwrite,
                             progress=progress, lexical=lexical, encoding=record)
            if not keep_embeddings:
                embeddings.remove_files()
                _remove_if_empty(work_dir)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return BlockIndex.load_from_disk(output_dir, verify=False)


@contextlib.contextmanager
def _build_lock(work_dir: Path, output_dir: Path, is_main: bool):
    """One build per output at a time: the main process locks the work directory (two builds of one --output would
    share it and delete each other's chunks); a second build is refused at once with a BlockingIOError."""
    if not is_main:
        yield
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(work_dir, f"The index {output_dir}"):
        yield


def with_block_ids(blocks):
    """Add `block_id` (row numbers) and `doc_id` (the block id as a string) columns when they are missing."""
    if "block_id" not in blocks.column_names:
        blocks = blocks.add_column("block_id", list(range(len(blocks))))
    if "doc_id" not in blocks.column_names:
        blocks = blocks.add_column("doc_id", [str(i) for i in blocks["block_id"]])
    return blocks


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it, or "
                              "choose another output directory.")


def _remove_if_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
