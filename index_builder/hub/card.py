"""The dataset card (README.md) of a BlockIndex repo on the Hub.

The YAML header points `datasets.load_dataset(repo_id)` at the parquet shards and tags the repo; the body says what
the index holds (blocks, dimension, FAISS factory, search parameters, embedder) and how to load it.
"""

import json

from huggingface_hub import DatasetCardData

from index_builder.index.manifest import FAISS_FILE, LEXICAL_FILES, MANIFEST, Manifest

DATA_DIR = "data"
SHARD_PATTERN = f"{DATA_DIR}/*.parquet"
TAGS = ["realm", "realm-hf", "retrieval", "faiss", "embeddings"]
# The Hub's size_categories, as (upper bound, label).
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]


def render_card(manifest: Manifest, repo_id: str, description: str | None = None) -> str:
    """README.md text for a Hub repo holding the index described by `manifest` (whose `files` are the repo's)."""
    return f"---\n{card_data(manifest).to_yaml()}\n---\n\n{card_body(manifest, repo_id, description)}"


def card_data(manifest: Manifest) -> DatasetCardData:
    """YAML metadata: one `train` split made of data/*.parquet, so the blocks also load with `datasets`."""
    return DatasetCardData(
        license="unknown",
        tags=TAGS,
        task_categories=["text-retrieval"],
        size_categories=[size_category(manifest.num_blocks)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": SHARD_PATTERN}]}],
    )


def size_category(num_blocks: int) -> str:
    for bound, label in SIZE_CATEGORIES:
        if num_blocks < bound:
            return label
    return "n>1B"


def card_body(manifest: Manifest, repo_id: str, description: str | None) -> str:
    shards = sorted(name for name in manifest.files if name.startswith(DATA_DIR + "/"))
    sections = [
        f"# REALM block index: {repo_id}",
        description.strip() if description else "A corpus split into blocks, their embeddings and a FAISS index of "
                                                 "them, built with [realm-hf](https://pypi.org/project/realm-hf/).",
        "## Index\n\n" + _table(_facts(manifest)),
        "## Files\n\n" + _files(manifest, shards),
        "## Usage\n\n" + _usage(repo_id, manifest.dimension),
        "The license of the corpus text is the license of its source; this card does not set one (edit `license` "
        "above when you know it).",
    ]
    return "\n\n".join(sections) + "\n"


def _facts(manifest: Manifest) -> list[tuple[str, str]]:
    return [
        ("blocks", f"{manifest.num_blocks:,}"),
        ("dimension", str(manifest.dimension)),
        ("metric", manifest.metric.replace("_", " ")),
        ("FAISS factory", f"`{manifest.factory}`"),
        ("search parameters", f"`{json.dumps(manifest.search_params, sort_keys=True)}`"),
        ("embedder", f"`{manifest.embedder_name}`" if manifest.embedder_name else "not recorded"),
        ("embedder fingerprint", f"`{manifest.embedder_fingerprint}`" if manifest.embedder_fingerprint
         else "not recorded"),
        ("block ids", "0 .. n-1" if manifest.contiguous_ids else "increasing, with gaps"),
        ("lexical part", _lexical_fact(manifest.lexical)),
        ("encoding precision", encoding_fact(manifest.encoding)),
        ("created", manifest.created),
    ]


def _files(manifest: Manifest, shards: list[str]) -> str:
    listing = (f"- `{SHARD_PATTERN}`: the blocks in block-id order, {len(shards)} shard(s), columns `block_id` "
               f"(int64), `doc_id`, `title`, `text` (string) and `embeddings` (float32 [{manifest.dimension}]).\n"
               f"- `{FAISS_FILE}`: the FAISS index of the embeddings (inner product), searched by block id.\n"
               f"- `{MANIFEST}`: the index metadata above with the size and xxh3-64 checksum of every file; "
               "`from_pretrained` checks the downloaded files against it.")
    if manifest.lexical is not None:
        listing += (f"\n- `{LEXICAL_FILES[0]}`, `bm25/*.npy`: the lexical part, BM25 postings of every block's title "
                    "and text (the sorted vocabulary; per term, its blocks' rows and weights), memory-mapped when "
                    "served; hybrid search fuses it with the dense scores.")
    rows = [(f"`{name}`", f"{entry['bytes']:,}") for name, entry in sorted(manifest.files.items())]
    return listing + "\n\n" + _table(rows, header=("file", "bytes"))


def _lexical_fact(lexical: dict | None) -> str:
    if lexical is None:
        return "none (dense search only)"
    return (f"BM25 (k1={lexical['k1']}, b={lexical['b']}, stop words: {lexical['stopwords'] or 'none'}, stemmer: "
            f"{lexical['stemmer'] or 'none'}), {lexical['num_terms']:,} terms, {lexical['num_postings']:,} postings")


def encoding_fact(encoding: dict | None) -> str:
    """The precision the embeddings were computed in and, when reduced, how close they are to float32."""
    if encoding is None:
        return "float32 (no reduced precision recorded)"
    how = f"{encoding['dtype']} ({'autocast' if encoding['autocast'] else 'the whole block tower'})"
    if not encoding["sample_blocks"]:
        return f"{how}; agreement with float32 not measured"
    top = encoding["top5_agreement"]
    return (f"{how}; against float32 on {encoding['sample_blocks']:,} sample blocks: cosine mean "
            f"{encoding['cosine_mean']:.6f} (min {encoding['cosine_min']:.6f}), top-5 agreement "
            f"{'not measured' if top is None else f'{top:.4f}'}")


def _usage(repo_id: str, dimension: int) -> str:
    return (
        "```bash\npip install realm-hf\n```\n\n"
        "```python\nfrom index_builder import BlockIndex\n\n"
        f'index = BlockIndex.from_pretrained("{repo_id}")\n'
        f"scores, block_ids = index.search(query_embeddings, k=5)  # query_embeddings: float32 [batch, {dimension}]\n"
        "blocks = index.get_blocks(block_ids)  # block_id, doc_id, title, text\n"
        "# with a lexical part: by text alone, or hybrid (the default when both are given)\n"
        'scores, block_ids = index.search(query_embeddings, k=5, query_texts=["who wrote hamlet?"])\n```\n\n'
        "The first load downloads the files, checks them against `manifest.json` and converts the parquet shards "
        "into a memory-mapped Arrow file in the Hub cache; later loads reuse it. The blocks alone (no FAISS) load "
        "with `datasets`:\n\n"
        f'```python\nfrom datasets import load_dataset\n\nblocks = load_dataset("{repo_id}", split="train")\n```'
    )


def _table(rows, header=("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines)


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
