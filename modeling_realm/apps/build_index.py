"""`realm-build-index`: build a searchable BlockIndex from a corpus file and a retriever, in one command."""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from modeling_realm.apps.arguments import check_output, non_negative_int, positive_int, precision_problem, search_param

DESCRIPTION = """\
Build a REALM block index: split a corpus into blocks of at most 288 wordpieces, embed every block with a
retriever's block tower, and save the blocks, their embeddings and a FAISS index to a directory that
BlockIndex.load_from_disk (or realm-qa) reads.

examples:
  realm-build-index docs.jsonl --output my-index
  realm-build-index docs.jsonl --output my-index --lexical bm25     # also BM25, for lexical and hybrid search
  realm-build-index --lexical bm25 --output my-index                # no corpus: add BM25 to an existing index
  realm-build-index docs.csv --output my-index --text-field body --title-field heading --factory IVF1024,PQ32
  realm-build-index docs.jsonl --output my-index --dtype bfloat16   # 2-3x faster on a CPU with AVX512-BF16/AMX
  accelerate launch --num_processes 4 -m modeling_realm.apps.build_index docs.parquet --output my-index \
      --mixed-precision bf16

The corpus is a .jsonl/.json/.csv/.parquet file, a directory saved with datasets' save_to_disk, or a Hub dataset
id; each record needs a text field (and optionally title and doc_id). Without --model, the offline demo model
(all-MiniLM-L6-v2 with an untrained projection) is used. A run that is interrupted resumes where it stopped when
the same command is run again (the finished embeddings wait in a hidden folder next to --output).
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="realm-build-index", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", default=None,
                        help="corpus file, saved datasets directory, or Hub dataset id (leave it out with --lexical to "
                             "add a lexical part to the existing index at --output)")
    parser.add_argument("--output", "-o", required=True, help="directory to write the index to")
    parser.add_argument("--model", default=None,
                        help="REALM retriever/scorer/embedder or BERT checkpoint (Hub id or directory); "
                             "default: the offline MiniLM demo")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's)")
    parser.add_argument("--factory", default="Flat",
                        help="FAISS factory string: Flat (exact, default), IVF{n},Flat, IVF{n},PQ{m}, HNSW32")
    parser.add_argument("--search-param", action="append", default=[], metavar="NAME=VALUE", type=search_param,
                        help="query-time setting stored with the index, e.g. nprobe=32, efSearch=128, rerank=25, or "
                             "precision=bfloat16 (a Flat index scores in bfloat16, then re-scores in float32)")
    corpus = parser.add_argument_group("corpus")
    corpus.add_argument("--text-field", default="text")
    corpus.add_argument("--title-field", default="title")
    corpus.add_argument("--doc-id-field", default="doc_id")
    corpus.add_argument("--split", default="train", help="split of a Hub or saved dataset (default train)")
    corpus.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                        help="bad records: stop with an error naming file and line (default), or skip and count")
    corpus.add_argument("--max-block-length", type=positive_int, default=288, help="wordpieces per block (default 288)")
    corpus.add_argument("--num-proc", type=positive_int, default=None, help="processes for splitting the corpus")
    encoding = parser.add_argument_group("encoding")
    encoding.add_argument("--batch-size", type=positive_int, default=64)
    encoding.add_argument("--max-length", type=positive_int, default=None,
                          help="tokens per block input, title included (at least 8; default 512, or the model's "
                               "positions if fewer)")
    encoding.add_argument("--chunk-size", type=positive_int, default=8192, help="blocks per resumable chunk")
    encoding.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                          help="run a copy of the block tower in this dtype (float16 on a GPU only); the manifest "
                               "records how well a sample of blocks agrees with float32 (default float32)")
    encoding.add_argument("--agreement-sample", type=non_negative_int, default=512,
                          help="blocks also encoded in float32 to measure a reduced dtype's agreement (default 512; "
                               "0: record the dtype alone)")
    encoding.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                          help="autocast over the float32 tower instead (not together with --dtype)")
    encoding.add_argument("--cpu", action="store_true", help="encode on CPU even when a GPU is present")
    lexical = parser.add_argument_group("lexical part (BM25, for lexical and hybrid search)")
    lexical.add_argument("--lexical", choices=["bm25"], default=None,
                         help="also index the blocks' titles and texts with BM25 (without a corpus: add it to the "
                              "index at --output, nothing is re-encoded)")
    lexical.add_argument("--stopwords", default="en", help="stop-word list: a language such as en, de, fr, or none")
    lexical.add_argument("--stemmer", default=None, help="PyStemmer algorithm, e.g. english (pip install PyStemmer)")
    lexical.add_argument("--bm25-k1", type=float, default=1.5, help="BM25 term-frequency saturation (default 1.5)")
    lexical.add_argument("--bm25-b", type=float, default=0.75, help="BM25 length normalisation in [0, 1] "
                                                                    "(default 0.75)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index at --output")
    parser.add_argument("--keep-embeddings", action="store_true", help="keep the chunk files after building")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.max_length is not None and args.max_length < 8:
        parser.error(f"--max-length must be >= 8 ([CLS], [SEP] and some text), got {args.max_length}.")
    problem = precision_problem(args.dtype, args.mixed_precision, args.cpu)
    if problem is not None:
        parser.error(problem)
    args.lexical_settings = lexical_settings(args, parser)
    if args.corpus is None:
        if args.lexical is None:
            parser.error("pass a corpus to index (or, with --lexical bm25 and no corpus, an existing --output index "
                         "to add a lexical part to).")
        check_existing_index(args.output, parser)
    else:
        check_output(args.output, args.overwrite)
    args.search_params = dict(args.search_param)
    args.parser = parser
    return args


def lexical_settings(args, parser):
    """The LexicalSettings of --lexical and its options (None without --lexical), checked before any work."""
    if args.lexical is None:
        return None
    from index_builder.index.lexical import LexicalSettings

    stopwords = None if args.stopwords.lower() == "none" else args.stopwords
    try:
        return LexicalSettings(k1=args.bm25_k1, b=args.bm25_b, stopwords=stopwords, stemmer=args.stemmer)
    except ValueError as error:
        parser.error(f"--lexical options: {error}")


def check_existing_index(output: str, parser) -> None:
    if not (Path(output) / "manifest.json").is_file():
        parser.error(f"--output {output} is not an existing BlockIndex (no manifest.json); to add a lexical part, "
                     "point --output at an index built before, or pass a corpus to build a new one.")


def add_lexical_part(args) -> int:
    """`realm-build-index --lexical bm25 --output DIR` without a corpus: BM25 added in place, nothing re-encoded."""
    from index_builder.index.block_index import BlockIndex

    started = time.perf_counter()
    index = BlockIndex.load_from_disk(args.output, verify=False)
    index.add_lexical(args.lexical_settings, save=True, progress=not args.quiet)
    seconds = round(time.perf_counter() - started, 1)
    summary = {"blocks": len(index), "lexical": index.manifest.lexical, "seconds": seconds, "output": str(args.output)}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def check_model_settings(args, model) -> None:
    """What needs the model, checked before the corpus is read: the factory and search parameters for its embedding
    size, and the block input length against its position embeddings."""
    from index_builder.index.faiss_utils import check_build_settings

    positions = model.config.max_position_embeddings
    if args.max_length is None:
        args.max_length = min(512, positions)
    elif args.max_length > positions:
        args.parser.error(f"--max-length {args.max_length} exceeds the {positions} positions of the model; pass "
                          f"--max-length {positions} or less.")
    try:
        check_build_settings(args.factory, args.search_params, model.config.retriever_proj_size)
    except ValueError as error:
        args.parser.error(f"--factory {args.factory} / --search-param: {error}")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.corpus is None:
        return add_lexical_part(args)
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from index_builder.encoding.build import build_index
    from modeling_realm.models.loading import demo_model_path, load_retriever
    from tokenization import load_corpus, split_into_blocks

    started = time.perf_counter()
    accelerator = Accelerator(cpu=args.cpu)
    model = load_retriever(args.model)
    check_model_settings(args, model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model or demo_model_path())
    with accelerator.main_process_first():
        corpus = load_corpus(args.corpus, title_field=args.title_field, text_field=args.text_field,
                             doc_id_field=args.doc_id_field, split=args.split, on_error=args.on_error)
        blocks = split_into_blocks(corpus, tokenizer, max_block_length=args.max_block_length, num_proc=args.num_proc)
    index = build_index(blocks, model, tokenizer, args.output, factory=args.factory, batch_size=args.batch_size,
                        max_length=args.max_length, chunk_size=args.chunk_size, accelerator=accelerator,
                        mixed_precision=args.mixed_precision, dtype=args.dtype, agreement_sample=args.agreement_sample,
                        embedder_name=args.model or "all-MiniLM-L6-v2 demo", search_params=args.search_params,
                        overwrite=args.overwrite, keep_embeddings=args.keep_embeddings, progress=not args.quiet,
                        lexical=args.lexical_settings)
    if accelerator.is_main_process:
        summary = {"documents": len(corpus), "blocks": len(index), "dimension": index.dimension,
                   "factory": index.factory, "lexical": index.has_lexical, "encoding": index.manifest.encoding,
                   "seconds": round(time.perf_counter() - started, 1),
                   "bytes_on_disk": sum(p.stat().st_size for p in Path(args.output).rglob("*") if p.is_file()),
                   "output": str(args.output)}
        sys.stdout.write(json.dumps(summary) + "\n")
    accelerator.end_training()  # ends the process group under `accelerate launch`, before the interpreter exits
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
