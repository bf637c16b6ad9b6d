"""The transformers 4.57.6 side of the benchmarks, run as a subprocess by the reference virtual environment.

It does what `transformers.models.deprecated.realm.RealmForOpenQA` does at inference: the block embeddings sit in
the model's `block_emb` buffer (`[num_blocks, 128]` float32 in RAM), one question at a time is scored against all
of them with `torch.einsum("BD,QD->QB", block_emb, question_projection)` and the best `reader_beam_size` blocks are
taken with `torch.topk`; their texts come from `block_records`, a numpy object array of bytes held in RAM (what
4.x's `RealmRetriever` unpickles from `block_records.npy`).

    /work/venv-ref/bin/python benchmarks/reference_realm4.py search --embeddings E.npy --queries Q.npy --k 5
    /work/venv-ref/bin/python benchmarks/reference_realm4.py serve --embeddings E.npy --queries Q.npy --k 5
    /work/venv-ref/bin/python benchmarks/reference_realm4.py openqa --checkpoint DIR --num-blocks N \
        --questions Q.json --count 6

Each prints one JSON object on its last line. This file never runs inside this package's environment.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_embeddings import block_texts, memory_status  # noqa: E402  (numpy only)


def read_npy_into(path, tensor: torch.Tensor) -> None:
    """Fill `tensor` with the float32 `.npy` at `path` without an intermediate copy (the reference's best case)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
        if tuple(shape) != tuple(tensor.shape) or dtype != np.float32:
            raise ValueError(f"{path} holds {shape} {dtype}, expected {tuple(tensor.shape)} float32.")
        view = memoryview(tensor.numpy()).cast("B")
        filled = 0
        while filled < len(view):
            got = handle.readinto(view[filled:filled + (1 << 30)])
            if not got:
                raise ValueError(f"{path} ended after {filled} bytes.")
            filled += got


def load_queries(path) -> torch.Tensor:
    return torch.from_numpy(np.load(path, allow_pickle=False))


def search_4x(block_emb: torch.Tensor, question_projection: torch.Tensor, k: int) -> torch.Tensor:
    """4.57.6's retrieval step (RealmForOpenQA.forward): brute force over every block, then top-k."""
    # [1, num_blocks]
    batch_scores = torch.einsum("BD,QD->QB", block_emb, question_projection)
    # [1, k]
    _, retrieved_block_ids = torch.topk(batch_scores, k=k, dim=-1)
    return retrieved_block_ids.squeeze(0)


def run_search(args) -> dict:
    shape = np.load(args.embeddings, mmap_mode="r").shape
    block_emb = torch.empty(shape, dtype=torch.float32)
    read_npy_into(args.embeddings, block_emb)
    queries = load_queries(args.queries)
    search_4x(block_emb, queries[:1], args.k)  # warm-up
    times, ids = [], []
    with torch.no_grad():
        for query in queries:
            start = time.perf_counter()
            found = search_4x(block_emb, query[None], args.k)
            times.append(time.perf_counter() - start)
            ids.append(found.tolist())
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "num_queries": len(times),
            "ids": ids, "torch_threads": torch.get_num_threads(), "transformers": _transformers_version()}


def run_serve(args) -> dict:
    """Serve like 4.x: RealmForOpenQA with block_emb in RAM, block_records in RAM, brute-force search."""
    from transformers.models.deprecated.realm import RealmConfig, RealmForOpenQA

    num_blocks = np.load(args.embeddings, mmap_mode="r").shape[0]
    # Tiny towers: the comparison is about the index; both sides leave model weights out.
    config = RealmConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, retriever_proj_size=128, num_block_records=num_blocks,
                         reader_beam_size=args.k)
    model = RealmForOpenQA(config).eval()
    read_npy_into(args.embeddings, model.block_emb)
    block_records = block_records_of(num_blocks, args.seed, args.text_bytes)
    queries = load_queries(args.queries)
    fetched = 0
    start = time.perf_counter()
    with torch.no_grad():
        for query in queries:
            ids = search_4x(model.block_emb, query[None], model.searcher_beam_size)
            fetched += sum(len(block_records[i]) for i in ids.tolist())
    elapsed = time.perf_counter() - start
    return {**memory_status(), "num_blocks": num_blocks, "seconds_per_query": elapsed / len(queries),
            "bytes_fetched": fetched, "transformers": _transformers_version()}


def block_records_of(num_blocks: int, seed: int, text_bytes: int = 0) -> np.ndarray:
    """The synthetic block texts as 4.x's `RealmRetriever` holds them: an object array of bytes, all in RAM (each
    cut to its first `text_bytes` bytes when given: whole 1.2 KB texts of 13.35M blocks do not fit in 24 GB)."""
    block_records = np.empty(num_blocks, dtype=object)
    cut = slice(0, text_bytes or None)
    for start in range(0, num_blocks, 65536):  # the chunking of synthetic_embeddings.write_texts
        stop = min(start + 65536, num_blocks)
        block_records[start:stop] = [text.encode()[cut] for text in block_texts(start, stop, seed)]
    return block_records


def run_openqa(args) -> dict:
    """4.x end to end: RealmForOpenQA.forward on one question at a time (the only batch size it takes)."""
    from transformers.models.deprecated.realm import RealmForOpenQA, RealmRetriever, RealmTokenizer

    tokenizer = RealmTokenizer(vocab_file=str(Path(args.checkpoint) / "vocab.txt"))  # the same lower-case WordPiece
    retriever = RealmRetriever(block_records_of(args.num_blocks, args.seed), tokenizer)
    model = RealmForOpenQA.from_pretrained(args.checkpoint, retriever=retriever).eval()
    questions = json.loads(Path(args.queries).read_text())[:args.count]

    def answer(question: str) -> str:
        inputs = tokenizer([question], return_tensors="pt")
        output = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                       token_type_ids=inputs.token_type_ids, return_dict=True)
        return tokenizer.decode(output.predicted_answer_ids)

    times, answers = [], []
    with torch.no_grad():
        answer(questions[0])  # warm-up
        for question in questions:
            start = time.perf_counter()
            answers.append(answer(question))
            times.append(time.perf_counter() - start)
    return {"seconds_per_question": statistics.median(times), "answers": answers,
            "peak_rss_bytes": memory_status()["peak_rss_bytes"], "transformers": _transformers_version()}


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["search", "serve", "openqa"])
    parser.add_argument("--embeddings", help="float32 .npy [num_blocks, 128] (search, serve)")
    parser.add_argument("--queries", help="float32 .npy [num_queries, 128] (search, serve); questions JSON (openqa)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic texts (serve, openqa)")
    parser.add_argument("--checkpoint", help="RealmForOpenQA directory with its tokenizer (openqa)")
    parser.add_argument("--num-blocks", type=int, help="blocks of the synthetic corpus (openqa)")
    parser.add_argument("--count", type=int, default=6, help="questions to answer (openqa)")
    parser.add_argument("--text-bytes", type=int, default=0, help="cut each block text to this many bytes (serve)")
    args = parser.parse_args()
    needed = ["checkpoint", "num_blocks", "queries"] if args.mode == "openqa" else ["embeddings", "queries"]
    missing = [name for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"{args.mode} needs " + ", ".join("--" + name.replace("_", "-") for name in missing))
    result = {"search": run_search, "serve": run_serve, "openqa": run_openqa}[args.mode](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
