"""The lexical part of a BlockIndex: BM25 over the blocks' title and text, memory-mapped from its own files.

Blocks and queries are cut into terms by one function, `terms_of` (bm25s's tokenizer: lower case, words of two or more
letters or digits, optional stop words and stemming), with the settings recorded in the manifest. The BM25 weight of
every (term, block) pair is computed once at build time (Lucene's variant, as bm25s's default: idf = ln(1 + (N - df
+ 0.5) / (df + 0.5)), tf part = tf / (tf + k1 (1 - b + b len / avg len))) and stored term by term:

    bm25/terms.arrow   the sorted vocabulary (an Arrow stream of one string column); a term's id is its position
    bm25/indptr.npy    int64 [terms + 1]: the postings of term t lie at [indptr[t], indptr[t + 1])
    bm25/rows.npy      int32 [postings]: the row (in blocks.arrow) of each posting
    bm25/weights.npy   float32 [postings]: its BM25 weight

A query's score for a block is the sum of the weights of its terms (a repeated query term counts again), as bm25s
scores it. Serving reads only the postings of the query's terms, with `pread` (so they never stay mapped into the
process: see file_rows.py), and bisects the memory-mapped vocabulary; nothing is loaded whole. The files are untrusted
input like the rest of an index: their dtypes and shapes are checked when loaded, the vocabulary's order and the
postings' bounds when read.
"""

import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import weakref
from bisect import bisect_left
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index_builder.index.lexical_build import write_postings
from index_builder.index.manifest import LEXICAL_FILES, IndexMismatchError, listed_file

logger = logging.getLogger(__name__)

LEXICAL_DIR = "bm25"
TERMS_FILE, INDPTR_FILE, ROWS_FILE, WEIGHTS_FILE = LEXICAL_FILES


class NoIndexedTermError(ValueError):
    """A query has no term that occurs in the lexical index."""


@dataclass(frozen=True)
class LexicalSettings:
    """How blocks and queries become terms, and BM25's two parameters (see the module docstring).

    stopwords: a language bm25s knows ("en", "english", "de", ...) or None to keep every word.
    stemmer: a Snowball algorithm of PyStemmer ("english", "porter", ...) or None (`pip install PyStemmer`).
    """

    k1: float = 1.5
    b: float = 0.75
    stopwords: str | None = "en"
    stemmer: str | None = None
    lowercase: bool = True

    def __post_init__(self):
        problems = settings_problems(asdict(self))
        if problems:
            raise ValueError("Invalid lexical settings: " + "; ".join(problems) + ".")


def settings_problems(fields: dict) -> list[str]:
    """What is wrong with lexical settings (from a caller or a manifest); empty when nothing is."""
    problems = []
    k1, b = fields.get("k1"), fields.get("b")
    if not _is_number(k1) or not 0 <= k1 <= 100:
        problems.append(f"k1 is {k1!r}, expected a number in [0, 100]")
    if not _is_number(b) or not 0 <= b <= 1:
        problems.append(f"b is {b!r}, expected a number in [0, 1]")
    stopwords = fields.get("stopwords")
    if stopwords is not None and stopwords not in stopword_languages():
        problems.append(f"stopwords is {stopwords!r}, expected None or one of {sorted(stopword_languages())}")
    stemmer = fields.get("stemmer")
    if stemmer is not None and (not isinstance(stemmer, str) or not stemmer.isidentifier() or len(stemmer) > 40):
        problems.append(f"stemmer is {stemmer!r}, expected None or a PyStemmer algorithm such as 'english'")
    if not isinstance(fields.get("lowercase"), bool):
        problems.append(f"lowercase is {fields.get('lowercase')!r}, expected true or false")
    return problems


def stopword_languages() -> set:
    """The stop-word lists bm25s ships, by the names it takes."""
    return set(STOPWORD_LANGUAGES) | set(STOPWORD_LANGUAGES.values())


STOPWORD_LANGUAGES = {"en": "english", "en_plus": "english_plus", "de": "german", "nl": "dutch", "fr": "french",
                      "es": "spanish", "pt": "portuguese", "it": "italian", "ru": "russian", "sv": "swedish",
                      "no": "norwegian", "zh": "chinese", "tr": "turkish", "ko": "korean", "da": "danish"}


def terms_of(texts: list[str], settings: LexicalSettings) -> list[list[str]]:
    """The terms of each text, as blocks and queries are both cut (see `tokens_of`)."""
    words, parents = tokens_of(list(texts), settings)
    terms = [[] for _ in texts]
    for word, parent in zip(words.to_pylist(), parents.tolist()):
        terms[parent].append(word)
    return terms


def tokens_of(texts: list[str], settings: LexicalSettings) -> tuple[pa.Array, np.ndarray]:
    """Every term of `texts` in order `[tokens]` (strings) and the text each belongs to `[tokens]`.

    As bm25s cuts text: lower-cased, words of two or more letters, digits or underscores (its pattern, compiled once),
    minus the stop words (its lists), then stemmed. The stop words are removed in Arrow, and only each distinct word
    is stemmed.
    """
    found = [WORD.findall(text.lower() if settings.lowercase else text) if text else [] for text in texts]
    lengths = np.fromiter((len(words) for words in found), dtype=np.int64, count=len(found))
    words = pa.array(itertools.chain.from_iterable(found), type=pa.string(), size=int(lengths.sum()))
    parents = np.repeat(np.arange(len(found), dtype=np.int64), lengths)
    stopwords = _stopwords(settings.stopwords)
    if len(stopwords):
        keep = pc.invert(pc.is_in(words, value_set=stopwords))
        words, parents = pc.filter(words, keep), parents[np.asarray(keep, dtype=bool)]
    if settings.stemmer is not None:
        distinct = pc.unique(words)
        stems = pa.array(_stemmer(settings.stemmer)(distinct.to_pylist()), type=pa.string())
        words = pc.take(stems, pc.index_in(words, value_set=distinct))
    return words, parents


WORD = re.compile(r"(?u)\b\w\w+\b")


def _stopwords(language: str | None) -> pa.Array:
    if language is None:
        return pa.array([], type=pa.string())
    import bm25s.stopwords as lists

    name = STOPWORD_LANGUAGES.get(language, language).upper()
    words = getattr(lists, "STOPWORDS_EN" if name == "ENGLISH" else "STOPWORDS_EN_PLUS" if name == "ENGLISH_PLUS"
                    else f"STOPWORDS_{name}")
    return pa.array(sorted(set(words)), type=pa.string())


def _stemmer(name: str | None):
    if name is None:
        return None
    try:
        import Stemmer
    except ImportError as error:
        raise ImportError(f"The lexical settings stem terms with {name!r}, which needs PyStemmer: "
                          "pip install PyStemmer (or the realm-hf[stem] extra).") from error
    if name not in Stemmer.algorithms():
        raise ValueError(f"PyStemmer has no stemmer {name!r}; choose one of {Stemmer.algorithms()}.")
    return Stemmer.Stemmer(name).stemWords


class LexicalIndex:
    """BM25 postings of `num_blocks` blocks (rows 0..num_blocks-1 of their table), in the files of `folder`;
    `search(texts, k)`. Made by `write` (into a folder) and `load`, or `build` (into a temporary folder it owns)."""

    def __init__(self, terms: pa.Array, indptr, rows, weights, settings: LexicalSettings, num_blocks: int,
                 blocks_digest: str, folder: Path):
        self.terms, self.indptr, self.rows, self.weights = terms, indptr, rows, weights
        self.settings, self.num_blocks, self.blocks_digest = settings, int(num_blocks), blocks_digest
        self.folder = Path(folder)
        self._threads = threading.local()  # each searching thread's score array (see _best)

    # ----------------------------------------------------------------- build
    @staticmethod
    def write(texts, num_blocks: int, settings: LexicalSettings, blocks_digest: str, folder: Path,
              progress: bool = True) -> dict:
        """Write the lexical part of `texts` (batches of strings, lists or Arrow arrays: one per block, title and
        text together, in row order; `num_blocks` in all) into `folder`; returns its manifest entry."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        sizes = write_postings(texts, num_blocks, settings, Path(folder), tokens_of, progress)
        return {"method": "bm25", **asdict(settings), "num_blocks": int(num_blocks), **sizes,
                "blocks_digest": blocks_digest}

    @classmethod
    def build(cls, texts, num_blocks: int, settings: LexicalSettings, blocks_digest: str,
              progress: bool = True) -> "LexicalIndex":
        """`write` into a temporary folder, removed when the returned index is garbage-collected (an index held in
        memory; `save` copies its files into an index directory)."""
        scratch = Path(tempfile.mkdtemp(prefix="realm-bm25-"))
        try:
            record = cls.write(texts, num_blocks, settings, blocks_digest, scratch / LEXICAL_DIR, progress)
            index = cls.load(scratch, record)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        weakref.finalize(index, shutil.rmtree, scratch, True)
        return index

    # ----------------------------------------------------------------- search
    def __len__(self) -> int:
        return self.num_blocks

    @property
    def num_terms(self) -> int:
        return len(self.terms)

    @property
    def num_postings(self) -> int:
        return int(len(self.rows))

    def search(self, query_texts: list[str], k: int, require_terms: bool = True):
        """The `k` best blocks of each query by BM25.

        Returns scores `[batch, k]` float32 and rows `[batch, k]` int64, best first (equal scores by row). A query that
        matches fewer than k blocks is completed with unmatched blocks (score 0, lowest rows first). A query none of
        whose terms occurs in any block raises NoIndexedTermError, unless `require_terms` is False.
        """
        k = min(int(k), self.num_blocks)
        scores = np.zeros((len(query_texts), k), dtype=np.float32)
        rows = np.zeros((len(query_texts), k), dtype=np.int64)
        for i, terms in enumerate(terms_of(list(query_texts), self.settings)):
            best, best_scores = self._best(self._postings(terms), k)
            if len(best) == 0 and require_terms:
                raise NoIndexedTermError(
                    f"Query {query_texts[i][:80]!r} has no term that occurs in the indexed blocks (terms: "
                    f"{terms[:8]}); lexical search cannot rank blocks for it. Search it with mode='dense' or 'hybrid'.")
            scores[i], rows[i] = _completed(best, best_scores, k, self.num_blocks)
        return scores, rows

    def candidates(self, query_texts: list[str], depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (scores `[m]`, rows `[m]`) of its at most `depth` best blocks that hold one of its terms (none
        for a query without indexed terms): the lexical side of a hybrid search."""
        scores, rows = self.search(query_texts, depth, require_terms=False)
        matched = scores > 0  # [batch, depth]: BM25 weights are positive, so 0 marks the blocks that only fill k
        return [(s[m], r[m]) for s, r, m in zip(scores, rows, matched)]

    def scores_of(self, terms: list[str]):
        """(rows, scores) of every block that holds one of `terms`: rows `[m]` increasing, scores `[m]` float32."""
        pieces = self._postings(terms)
        if not pieces:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows = np.concatenate([rows for rows, _ in pieces])
        matched, inverse = np.unique(rows, return_inverse=True)
        weights = np.concatenate([weights for _, weights in pieces]).astype(np.float64)
        return matched, np.bincount(inverse, weights=weights).astype(np.float32)

    def _postings(self, terms: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows `[m_t]` int64, weights `[m_t]` float32) of each query term that the index holds, a repeated term
        again; checked to lie inside the index."""
        pieces = []
        for term_id in (i for i in (self._term_id(t) for t in terms) if i is not None):
            start, stop = self._postings_span(term_id)
            rows = np.asarray(self.rows[start:stop], dtype=np.int64)
            weights = np.asarray(self.weights[start:stop], dtype=np.float32)
            self._check_postings(rows, weights)
            pieces.append((rows, weights))
        return pieces

    def _best(self, pieces: list, k: int):
        """The k best (rows, scores) of a query's postings, best first, equal scores by row.

        The weights are summed into this thread's array of every block's score, term by term (a term's rows are
        distinct, so one vectorised add per term); each term's rows are then read back and set to 0, so a block that
        holds several terms is read with its total once and as 0 after. The work is proportional to the postings
        read, not to the number of blocks.
        """
        if not pieces:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        totals = self._scratch()
        values = []
        try:
            for rows, weights in pieces:
                totals[rows] += weights
            for rows, _ in pieces:
                values.append(totals[rows])
                totals[rows] = 0
        finally:
            for rows, _ in pieces[len(values):]:
                totals[rows] = 0
        rows, values = np.concatenate([rows for rows, _ in pieces]), np.concatenate(values)  # [m] each
        chosen = values > 0
        if chosen.sum() > k:
            threshold = values[np.argpartition(-values, k - 1)[k - 1]]
            chosen &= values >= threshold  # every tie at the threshold too, so that ties go to the smaller row
        rows, values = rows[chosen], values[chosen]
        order = np.lexsort((rows, -values))[:k]
        return rows[order], values[order]

    def _scratch(self) -> np.ndarray:
        """This thread's float32 scores of every block `[num_blocks]`, all 0 between searches."""
        totals = getattr(self._threads, "totals", None)
        if totals is None:
            totals = self._threads.totals = np.zeros(self.num_blocks, dtype=np.float32)
        return totals

    def _term_id(self, term: str) -> int | None:
        position = bisect_left(_TermSequence(self.terms), term)
        if position < len(self.terms) and self.terms[position].as_py() == term:
            return position
        return None

    def _postings_span(self, term_id: int) -> tuple[int, int]:
        start, stop = (int(offset) for offset in self.indptr[term_id:term_id + 2])
        if not 0 <= start <= stop <= len(self.rows):
            raise IndexMismatchError(f"The lexical index's postings of term {term_id} lie at [{start}, {stop}), "
                                     f"outside its {len(self.rows)} postings; rebuild or re-download the index.")
        return start, stop

    def _check_postings(self, rows: np.ndarray, weights: np.ndarray):
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_blocks):
            raise IndexMismatchError(f"The lexical index has postings for rows outside its {self.num_blocks} blocks; "
                                     "rebuild or re-download the index.")
        if not np.isfinite(weights).all():
            raise IndexMismatchError("The lexical index holds NaN or infinite weights; rebuild or re-download it.")

    # ----------------------------------------------------------------- files
    def record(self) -> dict:
        """The manifest's `lexical` entry."""
        return {"method": "bm25", **asdict(self.settings), "num_blocks": self.num_blocks,
                "num_terms": self.num_terms, "num_postings": self.num_postings, "blocks_digest": self.blocks_digest}

    def save(self, folder: Path):
        """Copy the four files into `folder` (the `bm25/` folder of an index being staged)."""
        folder = Path(folder)
        folder.mkdir(exist_ok=True)
        for name in LEXICAL_FILES:
            source = self.folder / Path(name).name
            if source.resolve() != (folder / source.name).resolve():
                shutil.copyfile(source, folder / source.name)

    @classmethod
    def load(cls, directory: Path, record: dict, trusted_root=None) -> "LexicalIndex":
        """Open the files of a lexical part described by the manifest entry `record` (already checked): the vocabulary
        memory-mapped, the postings read by `pread` when searched."""
        try:
            settings = LexicalSettings(**{key: record[key] for key in ("k1", "b", "stopwords", "stemmer", "lowercase")})
        except ValueError as error:
            raise IndexMismatchError(f"The manifest of {directory} describes a lexical part this package cannot "
                                     f"serve: {error} Rebuild it (BlockIndex.add_lexical) or re-download it."
                                     ) from error
        terms = _read_terms(listed_file(directory, TERMS_FILE, trusted_root))
        arrays = {name: _read_array(listed_file(directory, name, trusted_root), dtype)
                  for name, dtype in ((INDPTR_FILE, np.int64), (ROWS_FILE, np.int32), (WEIGHTS_FILE, np.float32))}
        index = cls(terms, arrays[INDPTR_FILE], arrays[ROWS_FILE], arrays[WEIGHTS_FILE], settings,
                    record["num_blocks"], record["blocks_digest"], Path(directory) / LEXICAL_DIR)
        index._check_shapes(record, directory)
        return index

    def _check_shapes(self, record: dict, directory):
        problems = []
        if self.num_terms != record["num_terms"] or len(self.indptr) != self.num_terms + 1:
            problems.append(f"{self.num_terms} terms and {len(self.indptr)} postings offsets, the manifest says "
                            f"{record['num_terms']} terms")
        if len(self.rows) != record["num_postings"] or len(self.weights) != len(self.rows):
            problems.append(f"{len(self.rows)} posting rows and {len(self.weights)} weights, the manifest says "
                            f"{record['num_postings']} postings")
        if not problems and not _offsets_in_order(self.indptr, len(self.rows)):
            problems.append("its postings offsets do not run from 0 to the number of postings in order")
        if not problems and self.num_terms > 1 and not pc.all(pc.less(self.terms[:-1], self.terms[1:])).as_py():
            problems.append("its vocabulary is not sorted")
        if problems:
            raise IndexMismatchError(f"The lexical part of the index at {directory} is inconsistent: " +
                                     "; ".join(problems) + ". Rebuild it (BlockIndex.add_lexical) or re-download it.")


def _offsets_in_order(indptr, total: int, chunk: int = 1 << 20) -> bool:
    """indptr runs from 0 to `total`, never decreasing (read a chunk at a time)."""
    if int(indptr[0]) != 0 or int(indptr[len(indptr) - 1]) != total:
        return False
    for start in range(0, len(indptr) - 1, chunk):
        piece = np.asarray(indptr[start:min(start + chunk + 1, len(indptr))])
        if (np.diff(piece) < 0).any():
            return False
    return True


class _TermSequence:
    """The vocabulary as a sequence of Python strings, read one at a time (for `bisect`)."""

    def __init__(self, terms: pa.Array):
        self.terms = terms

    def __len__(self) -> int:
        return len(self.terms)

    def __getitem__(self, i: int) -> str:
        return self.terms[i].as_py()


def _completed(rows: np.ndarray, scores: np.ndarray, k: int, num_blocks: int):
    """(scores `[k]`, rows `[k]`): the best rows, completed with unmatched rows at score 0 (lowest first)."""
    if len(rows) < k:
        rest = np.setdiff1d(np.arange(min(num_blocks, k + len(rows)), dtype=np.int64), rows)[:k - len(rows)]
        rows, scores = np.concatenate([rows, rest]), np.concatenate([scores, np.zeros(len(rest), np.float32)])
    return scores, rows


def _read_terms(path: Path) -> pa.Array:
    try:
        with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
            table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise IndexMismatchError(f"{path} is not a vocabulary file ({error}); rebuild or re-download the index.") \
            from error
    if table.schema != pa.schema([("term", pa.string())]):
        raise IndexMismatchError(f"{path} holds {table.schema}, not one string column 'term'; rebuild or "
                                 "re-download the index.")
    column = table.column("term")
    terms = column.chunk(0) if column.num_chunks == 1 else pa.concat_arrays(column.chunks)
    if terms.null_count:
        raise IndexMismatchError(f"{path} holds null terms; rebuild or re-download the index.")
    return terms


def _read_array(path: Path, dtype) -> "NpyColumn":
    """A one-dimensional .npy array of `dtype`, read by `pread` slice by slice; never unpickled."""
    try:
        return NpyColumn(path, dtype)
    except (ValueError, OSError) as error:
        raise IndexMismatchError(f"{path} is not a 1-d {np.dtype(dtype)} .npy array ({error}); rebuild or "
                                 "re-download the index.") from error


class NpyColumn:
    """A 1-d .npy file read with `os.pread`: `column[a:b]` copies just those items, so a query's postings never
    stay mapped into the server (as a memory map's pages would, counted in its resident set; see file_rows.py)."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        with open(self.path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"of .npy format version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, stored = read_header(file, max_header_size=10_000)
            self._offset = file.tell()
        if stored != self.dtype or len(shape) != 1:
            raise ValueError(f"it holds {stored} {shape}")
        self._length = int(shape[0])
        if self.path.stat().st_size != self._offset + self._length * self.dtype.itemsize:
            raise ValueError(f"its size disagrees with its header ({self._length} items)")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            if step != 1:
                raise ValueError("NpyColumn reads contiguous slices only.")
            return self._read(start, max(start, stop))
        index = int(key) + (self._length if int(key) < 0 else 0)
        if not 0 <= index < self._length:
            raise IndexError(f"index {key} out of range for {self._length} items")
        return self._read(index, index + 1)[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        size = (stop - start) * self.dtype.itemsize
        data = os.pread(self._fd, size, self._offset + start * self.dtype.itemsize)
        if len(data) != size:
            raise IndexMismatchError(f"{self.path} is shorter than its header says; rebuild or re-download the index.")
        return np.frombuffer(data, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        whole = self._read(0, self._length)
        return whole if dtype is None else whole.astype(dtype)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
