"""Writing the files of a lexical part (see lexical.py) in two passes, holding one batch of postings at a time.

Pass 1 cuts each batch of block texts into terms, counts every (block, term) pair and spills the batch's pairs to
three .npy files in the output folder, while the vocabulary, each term's document frequency and each block's length
accumulate in memory. Pass 2 sorts the vocabulary, computes the BM25 weight of every pair (now that the number of
blocks, the frequencies and the average length are known) and scatters each spilled batch into its terms' places in
`rows.npy` and `weights.npy`, memory-mapped, so that the postings of a term are in block order. Peak memory is the
vocabulary plus one batch, not the whole index (13.5 GB at 1M synthetic blocks when built in memory).
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

SPILL = ".pass1-{:06d}-{}.npy"  # a spilled batch: its rows, term ids (first-appearance order) and counts


def write_postings(texts, num_blocks: int, settings, folder: Path, tokens_of, progress: bool = True) -> dict:
    """Write terms.arrow, indptr.npy, rows.npy and weights.npy of `texts` (batches of block strings, in row order)
    into `folder`; returns {"num_terms", "num_postings"}."""
    folder = Path(folder)
    vocabulary, frequencies, lengths, batches = _count_pass(texts, num_blocks, settings, folder, tokens_of, progress)
    if not vocabulary:
        _remove_spills(folder, batches)
        raise ValueError(f"None of the {num_blocks} blocks has a term to index (every word is a stop word or shorter "
                         "than two letters); a lexical part would match nothing. Check the corpus, or index with "
                         "stopwords=None.")
    words = sorted(vocabulary)
    rank = np.empty(len(words), dtype=np.int64)  # first-appearance id -> position in the sorted vocabulary
    rank[np.fromiter((vocabulary[w] for w in words), dtype=np.int64, count=len(words))] = np.arange(len(words))
    del vocabulary
    by_rank = np.zeros(len(words), dtype=np.int64)
    by_rank[rank] = frequencies
    indptr = np.concatenate([[0], np.cumsum(by_rank)]).astype(np.int64)  # [terms + 1]
    _scatter_pass(folder, batches, rank, frequencies, lengths, indptr, settings)
    _write_terms(folder / "terms.arrow", words)
    np.save(folder / "indptr.npy", indptr, allow_pickle=False)
    return {"num_terms": len(words), "num_postings": int(indptr[-1])}


def _count_pass(texts, num_blocks: int, settings, folder: Path, tokens_of, progress: bool):
    """Pass 1: (vocabulary, document frequency per term id `[terms]`, length per block `[blocks]`, batch count)."""
    vocabulary: dict[str, int] = {}
    frequencies = np.zeros(0, dtype=np.int64)
    lengths, first, batches = [], 0, 0
    with tqdm(total=num_blocks, desc="Indexing terms (BM25)", unit="block", disable=not progress) as bar:
        for batch in texts:
            batch = batch.to_pylist() if isinstance(batch, pa.Array) else list(batch)
            words, parents = tokens_of(batch, settings)
            ids = _term_ids(words, vocabulary)
            batch_lengths = np.bincount(parents, minlength=len(batch))
            rows, term_ids, counts = _counts(ids, batch_lengths, first)
            frequencies = np.pad(frequencies, (0, len(vocabulary) - len(frequencies)))
            frequencies += np.bincount(term_ids, minlength=len(vocabulary))
            for name, array, dtype in (("rows", rows, np.int32), ("terms", term_ids, np.int32),
                                       ("counts", counts, np.int32)):
                np.save(folder / SPILL.format(batches, name), array.astype(dtype), allow_pickle=False)
            lengths.append(batch_lengths)
            first, batches = first + len(batch_lengths), batches + 1
            bar.update(len(batch_lengths))
    if first != num_blocks:
        _remove_spills(folder, batches)
        raise ValueError(f"Got texts for {first} blocks, expected {num_blocks}.")
    return vocabulary, frequencies, np.concatenate(lengths or [np.zeros(0, np.int64)]), batches


def _scatter_pass(folder: Path, batches: int, rank, frequencies, lengths, indptr, settings):
    """Pass 2: BM25 weights of each spilled batch, written to their terms' places in rows.npy / weights.npy."""
    total = int(indptr[-1])
    out_rows = np.lib.format.open_memmap(folder / "rows.npy", mode="w+", dtype=np.int32, shape=(total,))
    out_weights = np.lib.format.open_memmap(folder / "weights.npy", mode="w+", dtype=np.float32, shape=(total,))
    num_blocks = len(lengths)
    idf = np.log1p((num_blocks - frequencies + 0.5) / (frequencies + 0.5))  # [terms], by first-appearance id
    average = max(float(lengths.mean()), 1e-9)
    norm = settings.k1 * (1 - settings.b + settings.b * lengths / average)  # [blocks]
    cursor = indptr[:-1].copy()  # [terms] next free place of each term (by sorted position)
    for batch in range(batches):
        rows, term_ids, counts = (np.load(folder / SPILL.format(batch, name), allow_pickle=False)
                                  for name in ("rows", "terms", "counts"))
        weights = (idf[term_ids] * counts / (counts + norm[rows])).astype(np.float32)  # [pairs]
        places = rank[term_ids]
        order = np.argsort(places, kind="stable")  # by term; rows stay in block order within a term
        places = places[order]
        terms, starts, sizes = np.unique(places, return_index=True, return_counts=True)
        destination = cursor[places] + (np.arange(len(places)) - np.repeat(starts, sizes))
        out_rows[destination], out_weights[destination] = rows[order], weights[order]
        cursor[terms] += sizes
    out_rows.flush()
    out_weights.flush()
    del out_rows, out_weights
    _remove_spills(folder, batches)


def _term_ids(words: pa.Array, vocabulary: dict) -> np.ndarray:
    """The id of every word `[tokens]`; new words join `vocabulary` (a Python loop over distinct words only)."""
    distinct = pc.unique(words)
    ids = np.fromiter((vocabulary.setdefault(word, len(vocabulary)) for word in distinct.to_pylist()),
                      dtype=np.int64, count=len(distinct))
    return ids[np.asarray(pc.index_in(words, value_set=distinct), dtype=np.int64)]


def _counts(ids: np.ndarray, lengths: np.ndarray, first_row: int):
    """(rows, term ids, counts) `[pairs]` of one batch, by row then term: how often each term occurs in each block."""
    docs = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # [tokens]
    pairs, counts = np.unique(docs << 32 | ids, return_counts=True)
    return (pairs >> 32) + first_row, pairs & 0xFFFFFFFF, counts


def _write_terms(path: Path, words: list[str]):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("term", pa.string())])) as writer:
        writer.write_batch(pa.record_batch([pa.array(words, type=pa.string())], names=["term"]))


def _remove_spills(folder: Path, batches: int):
    for batch in range(batches):
        for name in ("rows", "terms", "counts"):
            (folder / SPILL.format(batch, name)).unlink(missing_ok=True)
