"""`realm-convert-tf-checkpoint`: google's TensorFlow REALM/ORQA checkpoint -> a safetensors model directory."""

import argparse
import json
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
Convert one of google's original TensorFlow REALM or ORQA checkpoints (google-research/language) into a model
directory that from_pretrained reads (model.safetensors + config.json, and the tokenizer when a vocabulary is
found). TensorFlow is not needed.

examples:
  realm-convert-tf-checkpoint cc_news_pretrained/embedder --model-type embedder --output realm-embedder
  realm-convert-tf-checkpoint orqa_nq_model --model-type reader --output orqa-nq-reader
  realm-convert-tf-checkpoint orqa_nq_model orqa_nq_model/encoded --model-type openqa --output orqa-nq-openqa

CHECKPOINT is a checkpoint directory (its `checkpoint` file, its single *.index, or a TF-Hub module's
variables/), a prefix such as dir/model.ckpt-1000, or its .index file; several are merged (an open-QA model's
block embeddings live in encoded/encoded.ckpt). The sizes are read from the weights unless --config is given.
The output directory is written atomically: it appears complete or not at all.
"""

MODEL_TYPES = ("embedder", "scorer", "retriever", "encoder", "reader", "openqa")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="realm-convert-tf-checkpoint", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="TensorFlow checkpoint(s)")
    parser.add_argument("--output", "-o", required=True, help="model directory to write")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES,
                        help="what the checkpoint holds: embedder (RealmEmbedder), scorer (RealmScorer), retriever "
                             "(RealmRetriever), encoder (RealmKnowledgeAugEncoder), reader (RealmReader), openqa "
                             "(RealmForOpenQA)")
    parser.add_argument("--config", default=None, help="config.json with the model's sizes (default: from the weights)")
    parser.add_argument("--vocab", default=None,
                        help="vocab.txt to save a tokenizer with the model (default: assets/vocab.txt of a TF-Hub "
                             "module, if there is one)")
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC-32C check of the tensor bytes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory at --output")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    check_model_output(parser, args.output, args.overwrite)
    for path in [args.config, args.vocab]:
        if path is not None and not Path(path).is_file():
            parser.error(f"{path} is not a file.")
    return args


def check_model_output(parser, output: str, overwrite: bool) -> None:
    """Refuse, before any weight is read, an --output that exists (without --overwrite) or is not a model dir."""
    path = Path(output)
    if not path.exists():
        return
    if not overwrite:
        parser.error(f"--output {output} already exists; pass --overwrite to replace it, or choose another path.")
    if not path.is_dir() or (any(path.iterdir()) and not (path / "config.json").is_file()):
        parser.error(f"--output {output} exists and is not a model directory; refusing to replace it. Choose "
                     "another path.")


def model_class(model_type: str):
    from modeling_realm.models import (
        RealmEmbedder,
        RealmKnowledgeAugEncoder,
        RealmReader,
        RealmRetriever,
        RealmScorer,
    )
    from modeling_realm.openqa.model import RealmForOpenQA

    return {"embedder": RealmEmbedder, "scorer": RealmScorer, "retriever": RealmRetriever,
            "encoder": RealmKnowledgeAugEncoder, "reader": RealmReader, "openqa": RealmForOpenQA}[model_type]


def find_vocab(args) -> Path | None:
    if args.vocab is not None:
        return Path(args.vocab)
    for checkpoint in args.checkpoints:
        candidate = Path(checkpoint) / "assets" / "vocab.txt"
        if candidate.is_file():
            return candidate
    return None


def convert(args) -> dict:
    from modeling_realm.models.configuration import RealmConfig
    from tokenization import RealmTokenizerFast
    from tokenization.storage import atomic_directory

    config = RealmConfig.from_json_file(args.config) if args.config else None
    cls = model_class(args.model_type)
    model = cls.from_tf_checkpoint(args.checkpoints, config=config, verify_checksums=not args.no_verify)
    vocab = find_vocab(args)
    tokenizer = RealmTokenizerFast(vocab_file=str(vocab)) if vocab is not None else None
    with atomic_directory(args.output, overwrite=args.overwrite) as staging:
        model.save_pretrained(staging, tokenizer=tokenizer, repo_id=Path(args.output).name)
    return {"model": cls.__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "tokenizer": str(vocab) if vocab else None, "output": str(args.output)}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = convert(args)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
