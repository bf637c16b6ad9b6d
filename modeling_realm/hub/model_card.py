"""The README.md model card written next to a saved or pushed REALM model.

It says what the model is (class, role in REALM, sizes read from its config) and how to load it: with realm-hf
installed (`from modeling_realm import ...`) and without it (`AutoModel.from_pretrained(..., trust_remote_code=True)`,
through the code files saved by `remote_code`). The YAML header is huggingface_hub's `ModelCardData`.
"""

from importlib import metadata

from huggingface_hub import ModelCardData

PACKAGE = "realm-hf"
PAPER = "https://arxiv.org/abs/2002.08909"

# Class -> (Hub pipeline tag, what the model does). The reader and open-QA model answer questions, the encoder fills
# masks, the embedding towers produce retrieval embeddings.
ROLES = {
    "RealmEmbedder": ("feature-extraction",
                      "the retrieval embedder: text to a {retriever_proj_size}-d embedding (BERT, pooling, dense + "
                      "LayerNorm); queries and blocks are scored by inner product"),
    "RealmScorer": ("feature-extraction",
                    "the relevance scorer: embeds a query and its candidate blocks and scores them by inner product"),
    "RealmRetriever": ("feature-extraction",
                       "the trainable retriever (query tower + block tower); attach a block index to search a corpus"),
    "RealmKnowledgeAugEncoder": ("fill-mask",
                                 "the knowledge-augmented encoder of REALM pretraining: masked-LM over "
                                 "`[CLS] query [SEP] block [SEP]`, marginalised over {num_candidates} retrieved "
                                 "blocks"),
    "RealmReader": ("question-answering",
                    "the open-domain QA reader: scores answer spans (up to {max_span_width} wordpieces) in the top "
                    "{reader_beam_size} retrieved blocks"),
    "RealmForOpenQA": ("question-answering",
                       "open-domain question answering: question embedder + reader over the retrieved blocks"),
}
TAGS = ["realm", "retrieval"]


def package_version() -> str | None:
    """The installed realm-hf version, or None when the code runs without the package (e.g. as remote code)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def card_data(model, tags=None) -> ModelCardData:
    """The YAML header: library, tags and, where the class has one, the pipeline tag."""
    pipeline_tag = ROLES.get(type(model).__name__, (None, ""))[0]
    all_tags = list(TAGS)
    for tag in [*(getattr(model, "model_tags", None) or []), *(tags or [])]:
        if tag not in all_tags:
            all_tags.append(tag)
    return ModelCardData(library_name="transformers", tags=all_tags, pipeline_tag=pipeline_tag)


def model_card(model, repo_id: str, tokenizer=None, code_files=(), tokenizer_code_files=(), tags=None) -> str:
    """The README.md text for `model` stored under `repo_id` (a Hub id or a directory).

    `code_files` / `tokenizer_code_files` are the remote-code files saved with it (empty: no loading without
    realm-hf).
    """
    name = type(model).__name__
    sections = [
        f"---\n{card_data(model, tags).to_yaml()}\n---\n",
        f"# {repo_id.rstrip('/').split('/')[-1]}\n\n{_summary(model)}\n",
        "## Model\n\n" + _size_table(model, tokenizer) + "\n",
        _with_package(name, repo_id, tokenizer),
        _without_package(repo_id, tokenizer, code_files, tokenizer_code_files),
    ]
    return "\n".join(sections)


def _summary(model) -> str:
    name = type(model).__name__
    role = ROLES.get(name, (None, "a REALM model"))[1].format(**model.config.to_dict())
    version = package_version()
    saved_by = f"{PACKAGE} {version}" if version else PACKAGE
    return (f"`{name}` from [REALM]({PAPER}) (Guu et al., 2020, *Retrieval-Augmented Language Model Pre-Training*): "
            f"{role}. Saved with {saved_by}, which brings REALM to transformers 5 (transformers removed it in 5.0).")


def _size_table(model, tokenizer) -> str:
    config = model.config
    rows = [
        ("class", f"`{type(model).__name__}`"),
        ("backbone", f"BERT, {config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
                     f"{config.num_attention_heads} heads, intermediate size {config.intermediate_size}"),
        ("vocabulary", f"{config.vocab_size} wordpieces"),
        ("retrieval embedding", f"{config.retriever_proj_size}-d"),
        ("parameters", f"{model.num_parameters():,}"),
        *_class_rows(model),
        ("tokenizer", _tokenizer_summary(tokenizer)),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows) + "\n"


def _class_rows(model) -> list[tuple[str, str]]:
    config, name = model.config, type(model).__name__
    if name in ("RealmScorer", "RealmRetriever"):
        towers = "separate query and block embedders" if config.separate_query_embedder else "one shared embedder"
        return [("towers", towers)]
    if name == "RealmKnowledgeAugEncoder":
        return [("retrieved blocks per query", str(config.num_candidates))]
    if name in ("RealmReader", "RealmForOpenQA"):
        rows = [("reader", f"span scorer hidden size {config.span_hidden_size}, spans up to {config.max_span_width} "
                           f"wordpieces, {config.reader_beam_size} blocks read per question")]
        if name == "RealmForOpenQA":
            rows.append(("block embeddings", f"`block_emb`: {config.num_block_records:,} precomputed rows; the block "
                                             "texts live in a separate block index (realm-hf's `BlockIndex`)"))
        return rows
    return []


def _tokenizer_summary(tokenizer) -> str:
    if tokenizer is None:
        return "not included in this repository"
    return f"`{type(tokenizer).__name__}` (BERT WordPiece, {len(tokenizer)} entries)"


def _with_package(name: str, repo_id: str, tokenizer) -> str:
    lines = [f"from modeling_realm import {name}"]
    if tokenizer is not None:
        lines.append("from tokenization import RealmTokenizerFast")
    lines += ["", f'model = {name}.from_pretrained("{repo_id}")']
    if tokenizer is not None:
        lines.append(f'tokenizer = RealmTokenizerFast.from_pretrained("{repo_id}")')
    code = "\n".join(lines)
    return (f"## Load it with {PACKAGE}\n\n```bash\npip install {PACKAGE}\n```\n\n```python\n{code}\n```\n\n"
            f"Importing `modeling_realm` also registers REALM with `AutoConfig`/`AutoModel`, so "
            f'`AutoModel.from_pretrained("{repo_id}")` returns the same class.\n')


def _without_package(repo_id: str, tokenizer, code_files, tokenizer_code_files) -> str:
    heading = f"## Load it without {PACKAGE}\n\n"
    if not code_files:
        return heading + f"This repository carries no model code: install {PACKAGE} to load it.\n"
    lines = ["from transformers import AutoModel" + (", AutoTokenizer" if tokenizer is not None else ""), "",
             f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)']
    if tokenizer is not None:
        trust = ", trust_remote_code=True" if tokenizer_code_files else ""
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{trust})')
    code = "\n".join(lines)
    maps = "config.json" + (" and tokenizer_config.json" if tokenizer_code_files else "")
    files = f"`{code_files[0]}`, which defines the model class, and the {len(code_files) - 1} modules it imports"
    if tokenizer_code_files:
        files += f", plus `{tokenizer_code_files[0]}` for the tokenizer"
    return (heading + f"The repository carries the model's code: {files}, copied from {PACKAGE} and named in the "
            f"`auto_map` of {maps}. transformers 5 and torch are enough to load it; read those files before "
            "trusting them.\n\n"
            f"```python\n{code}\n```\n")
