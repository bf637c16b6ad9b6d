"""Starting points for the retrieval projection that keep what a pretrained encoder knows.

A fresh random `retriever_proj_size` projection scrambles a sentence encoder's space (SQuAD, all-MiniLM-L6-v2
mean-pooled: gold recall@5 86.5 at 384-d, 76.0 through a random 128-d projection; benchmarks/README.md section 8).
Two alternatives, both followed by the embedder's LayerNorm set to the identity affine (weight 1, bias 0), so the
output is the projected vector with its mean over components removed and scaled to unit variance: a cosine-like
normalisation, which is what sentence encoders were trained for:

- `init_projection_identity`: the projection is the identity (`retriever_proj_size == hidden_size`);
- `init_projection_from_corpus`: the projection keeps the top `retriever_proj_size` principal directions of pooled
  block embeddings over a corpus sample, centred on the sample mean (the dense bias subtracts it). Centring removes
  the direction every embedding shares (the mean of an anisotropic sentence space), which carries no ranking
  information but would dominate the first component. On SQuAD with MiniLM it changes nothing measurable (recall@5
  82.5 centred, 82.7 not, 128-d), nor does the LayerNorm against a plain cosine (82.5 both): the choices are safe,
  not gains.

The LayerNorm makes every embedding's norm sqrt(retriever_proj_size), so a score `query . block` is that size times
a cosine: +-384 at 384-d, where softmaxes over blocks (in-batch ICT, ORQA's retriever loss, the reader's
relevance term) are near-hard maxima with huge gradients. `set_score_scale` starts the LayerNorm weight at
sqrt(scale / retriever_proj_size), so a score is `scale` times a cosine (sentence-transformers' in-batch loss
scales cosines by 20); rankings do not change, and training may move the weight.
"""

import random

import torch

from modeling_realm.models.embedder import RealmEmbedder
from tokenization.block_inputs import DEFAULT_BLOCK_SEQ_LEN, block_inputs

DEFAULT_PCA_SAMPLE = 2048
DEFAULT_SCORE_SCALE = 20.0


def embedders_of(model) -> list[RealmEmbedder]:
    """Every `RealmEmbedder` of `model` (the model itself when it is one), block tower first."""
    found = [module for module in model.modules() if isinstance(module, RealmEmbedder)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no RealmEmbedder, so no retrieval projection to initialise; "
                         "pass a RealmEmbedder, RealmScorer, RealmRetriever or RealmForOpenQA.")
    return found


@torch.no_grad()
def set_projection(model, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Every embedder's projection := `weight` `[proj, hidden]`, `bias` `[proj]`; its LayerNorm := identity affine."""
    for embedder in embedders_of(model):
        head = embedder.cls
        if tuple(head.dense.weight.shape) != tuple(weight.shape):
            raise ValueError(f"The projection is {tuple(head.dense.weight.shape)} ([retriever_proj_size, hidden_size]) "
                             f"but the initial weight is {tuple(weight.shape)}.")
        head.dense.weight.copy_(weight)
        head.dense.bias.copy_(bias)
        head.LayerNorm.weight.fill_(1.0)
        head.LayerNorm.bias.zero_()


@torch.no_grad()
def set_score_scale(model, scale: float) -> None:
    """Every embedder's LayerNorm weight := sqrt(scale / retriever_proj_size): scores become `scale` x a cosine."""
    if not scale > 0:
        raise ValueError(f"The score scale must be > 0, got {scale}.")
    for embedder in embedders_of(model):
        embedder.cls.LayerNorm.weight.fill_((scale / embedder.config.retriever_proj_size) ** 0.5)


def init_projection_identity(model) -> None:
    """The projection of every embedder of `model` becomes the identity: the embedding is the pooled vector through
    the LayerNorm (identity affine). Needs `retriever_proj_size == hidden_size`."""
    config = model.config
    if config.retriever_proj_size != config.hidden_size:
        raise ValueError(f"An identity projection needs retriever_proj_size == hidden_size, got "
                         f"{config.retriever_proj_size} and {config.hidden_size}; set retriever_proj_size="
                         f"{config.hidden_size}, or use the principal components of a corpus (projection='pca').")
    size = config.hidden_size
    set_projection(model, torch.eye(size), torch.zeros(size))


def principal_directions(embeddings: torch.Tensor, k: int, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """embeddings `[n, hidden]` -> (top-k principal directions `[k, hidden]`, orthonormal rows, by decreasing
    variance; the mean `[hidden]`, zeros when `center` is False)."""
    n, hidden = embeddings.shape
    if k > min(n, hidden):
        raise ValueError(f"{k} principal directions need at least {k} embeddings of at least {k} dimensions, got "
                         f"{n} of {hidden}; embed more blocks, or lower retriever_proj_size.")
    data = embeddings.double()
    # [hidden]
    mean = data.mean(dim=0) if center else data.new_zeros(hidden)
    # Vh: [min(n, hidden), hidden], rows sorted by singular value
    _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)
    return vh[:k].float(), mean.float()


@torch.no_grad()
def pooled_block_embeddings(embedder: RealmEmbedder, tokenizer, titles: list[str], texts: list[str],
                            max_length: int = DEFAULT_BLOCK_SEQ_LEN, batch_size: int = 32) -> torch.Tensor:
    """The pooled backbone output (before the projection) of blocks `[n, hidden]`, tokenised as the index does."""
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    pooled = []
    for start in range(0, len(texts), batch_size):
        inputs = block_inputs(tokenizer, titles[start:start + batch_size], texts[start:start + batch_size],
                              max_length).to(device)
        outputs = embedder.realm(**inputs)
        # [batch, hidden]
        pooled.append(embedder.pool(outputs, inputs["attention_mask"]).float().cpu())
    embedder.train(was_training)
    return torch.cat(pooled)


def init_projection_from_corpus(model, tokenizer, blocks, sample_size: int = DEFAULT_PCA_SAMPLE, center: bool = True,
                                seed: int = 0, max_length: int = DEFAULT_BLOCK_SEQ_LEN,
                                batch_size: int = 32) -> torch.Tensor:
    """Set every embedder's projection of `model` to the top `retriever_proj_size` principal directions of the block
    tower's pooled embeddings of a sample of `blocks`.

    `blocks`: a list of texts, or anything with a "text" column and optionally a "title" column (the output of
    `tokenization.split_into_blocks`, a `datasets.Dataset`, a dict of lists). At most `sample_size` blocks, drawn with
    `seed`, are embedded. The dense layer computes `V (x - mean)` (`mean` = 0 when `center` is False). Meant for
    initialisation: the query tower gets the block tower's directions. Returns the singular values' share of
    variance of the kept directions `[retriever_proj_size]`.
    """
    titles, texts = _titles_and_texts(blocks)
    if not texts:
        raise ValueError("blocks is empty; principal directions need a sample of the corpus.")
    rows = sorted(random.Random(seed).sample(range(len(texts)), min(sample_size, len(texts))))
    block_tower = embedders_of(model)[0]
    embeddings = pooled_block_embeddings(block_tower, tokenizer, [titles[i] for i in rows], [texts[i] for i in rows],
                                         max_length, batch_size)
    k = model.config.retriever_proj_size
    components, mean = principal_directions(embeddings, k, center)
    set_projection(model, components, -components @ mean)
    # [n, k] -> share of the total variance each kept direction explains
    centred = embeddings - mean
    return (centred @ components.T).pow(2).sum(0) / centred.pow(2).sum()


def _titles_and_texts(blocks) -> tuple[list[str], list[str]]:
    if isinstance(blocks, (list, tuple)):
        if not all(isinstance(text, str) for text in blocks):
            raise TypeError("blocks must be a list of texts or have 'text' (and optionally 'title') columns.")
        return [""] * len(blocks), list(blocks)
    try:
        texts = list(blocks["text"])
    except (KeyError, TypeError, IndexError) as error:
        raise TypeError(f"blocks has no 'text' column ({type(blocks).__name__}); pass a list of texts or the output "
                        "of tokenization.split_into_blocks.") from error
    columns = getattr(blocks, "column_names", None) or (list(blocks) if isinstance(blocks, dict) else [])
    titles = list(blocks["title"]) if "title" in columns else [""] * len(texts)
    return [title or "" for title in titles], texts
