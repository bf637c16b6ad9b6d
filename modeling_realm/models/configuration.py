"""`RealmConfig`: one configuration object for every REALM model class.

It reads every field of the `google/realm-*` config.json files (including `searcher_seq_len` and `use_scann`,
which transformers 4.x only kept as loose attributes) with the defaults transformers 4.x used, plus the few
fields transformers 5's BERT modules read (`is_decoder`, `add_cross_attention`, `use_cache`).
"""

import dataclasses
import difflib
import functools
import logging

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig
from transformers.activations import ACT2FN

from modeling_realm.models.precision import check_precision

logger = logging.getLogger(__name__)

# Keys a config.json or from_pretrained may carry that are not dataclass fields but that PreTrainedConfig reads.
SERIALIZATION_KEYS = frozenset({
    "model_type", "transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "torch_dtype", "dtype",
    "num_labels", "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config",
    "auto_map", "_attn_implementation_autoset", "rope_scaling", "rope_theta",
})


# Ceilings far above any BERT-style model (BERT-large: 24 layers, 1024 hidden, 512 positions), so that a config.json
# with absurd sizes fails at once instead of allocating for minutes.
SIZE_CEILINGS = {"num_hidden_layers": 1024, "hidden_size": 65536, "intermediate_size": 1 << 20,
                 "num_attention_heads": 4096, "vocab_size": 1 << 24, "max_position_embeddings": 1 << 20,
                 "type_vocab_size": 1 << 16, "retriever_proj_size": 65536, "span_hidden_size": 65536,
                 "max_span_width": 1 << 16, "num_candidates": 1 << 20, "reader_beam_size": 1 << 20,
                 "searcher_beam_size": 1 << 20, "reader_seq_len": 1 << 20, "searcher_seq_len": 1 << 20}
RETRIEVER_POOLINGS = ("cls", "mean")
MAX_BACKBONE_PARAMETERS = 20_000_000_000
MAX_BLOCK_EMB_BYTES = 1 << 40  # 1 TiB: 13.35M google blocks x 128-d float32 take 6.8 GB

# Keys every transformers config may carry (PretrainedConfig's common attributes in 4.x and 5): kept silently, as
# transformers does, rather than reported as misspelt REALM fields.
STANDARD_CONFIG_KEYS = frozenset({
    "sep_token_id", "cls_token_id", "mask_token_id", "unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
    "decoder_start_token_id", "tokenizer_class", "prefix", "finetuning_task", "task_specific_params",
    "cross_attention_hidden_size", "pruned_heads", "torchscript", "tie_encoder_decoder", "use_bfloat16",
    "tf_legacy_loss", "output_attentions", "output_hidden_states", "return_dict", "problem_type", "id2label",
    "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "architectures",
})


@strict
class RealmConfig(PreTrainedConfig):
    r"""Configuration of the REALM embedder, scorer, knowledge-augmented encoder, reader, retriever and open-QA model.

    Defaults reproduce `google/realm-cc-news-pretrained-*` (BERT-base, 128-d retrieval projection).

    Args:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings, type_vocab_size,
        initializer_range, layer_norm_eps: the BERT backbone shared by every tower.
        retriever_proj_size (`int`, defaults to 128): size of the query/block embeddings used for retrieval.
        num_candidates (`int`, defaults to 8): retrieved blocks per query in `RealmScorer` and
            `RealmKnowledgeAugEncoder` (the `k` of the marginal likelihood).
        span_hidden_size (`int`, defaults to 256): hidden size of the reader's span scorer.
        max_span_width (`int`, defaults to 10): longest answer span (in wordpieces) the reader scores.
        reader_layer_norm_eps (`float`, defaults to 1e-3): epsilon of the span scorer's LayerNorm.
        reader_beam_size (`int`, defaults to 5): blocks the reader reads per question.
        reader_seq_len (`int`, defaults to 320): length of `[CLS] question [SEP] block [SEP]` reader inputs.
        num_block_records (`int`, defaults to 13353718): rows of the `block_emb` buffer of `RealmForOpenQA`.
        searcher_beam_size (`int`, defaults to 5000): blocks retrieved per question for the retriever loss.
        searcher_seq_len (`int`, defaults to 64): length of tokenized questions.
        use_scann (`bool`, defaults to `False`): kept for compatibility with google's config files; searching is
            done by FAISS in this package and the flag is not read.
        separate_query_embedder (`bool`, defaults to `False`): `RealmScorer`/`RealmRetriever` use one embedder
            for queries and blocks (as google's checkpoints do) unless this is `True`, in which case the query
            tower `query_embedder` is a second, independent `RealmEmbedder`.
        retriever_pooling (`str`, defaults to `"cls"`): how `RealmEmbedder` pools the BERT output before its
            projection: `"cls"` (the pooler over `[CLS]`, as google's checkpoints were trained) or `"mean"` (the mean
            of the last hidden states over the attention mask, as sentence encoders such as all-MiniLM-L6-v2 were).
    """

    model_type = "realm"

    vocab_size: int = 30522
    hidden_size: int = 768
    retriever_proj_size: int = 128
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_candidates: int = 8
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    span_hidden_size: int = 256
    max_span_width: int = 10
    reader_layer_norm_eps: float = 1e-3
    reader_beam_size: int = 5
    reader_seq_len: int = 320
    num_block_records: int = 13353718
    searcher_beam_size: int = 5000
    searcher_seq_len: int = 64
    use_scann: bool = False
    separate_query_embedder: bool = False
    retriever_pooling: str = "cls"
    precision: str = "float32"
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    # Read by transformers 5's BERT modules; REALM towers are bidirectional encoders.
    use_cache: bool = True
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        _warn_unknown_fields(kwargs)
        super().__post_init__(**kwargs)

    def validate_positive_sizes(self):
        names = ("vocab_size", "hidden_size", "retriever_proj_size", "num_hidden_layers", "num_attention_heads",
                 "num_candidates", "intermediate_size", "max_position_embeddings", "type_vocab_size",
                 "span_hidden_size", "max_span_width", "reader_beam_size", "reader_seq_len", "searcher_beam_size",
                 "searcher_seq_len")
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"RealmConfig.{name} must be a positive integer, got {value}.")
        if self.num_block_records < 0:
            raise ValueError(f"RealmConfig.num_block_records must be >= 0, got {self.num_block_records}.")

    def validate_size_limits(self):
        """Absurd sizes are refused before any tensor is made (a hand-edited or hostile config.json would otherwise
        allocate for minutes): each size has a ceiling far above any BERT, and so has the backbone's parameter count."""
        for name, ceiling in SIZE_CEILINGS.items():
            value = getattr(self, name)
            if value > ceiling:
                raise ValueError(f"RealmConfig.{name}={value} exceeds {ceiling:,}, far beyond any REALM/BERT model; "
                                 "check config.json (google's REALM checkpoints are BERT-base).")
        hidden = self.hidden_size
        parameters = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * hidden + \
            self.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * self.intermediate_size)
        if parameters > MAX_BACKBONE_PARAMETERS:
            raise ValueError(f"RealmConfig describes a BERT backbone of about {parameters:,} parameters (hidden_size="
                             f"{hidden}, num_hidden_layers={self.num_hidden_layers}, intermediate_size="
                             f"{self.intermediate_size}), more than {MAX_BACKBONE_PARAMETERS:,}; check config.json "
                             "(BERT-base has 110 million).")
        if self.num_block_records * self.retriever_proj_size * 4 > MAX_BLOCK_EMB_BYTES:
            raise ValueError(f"RealmConfig.num_block_records={self.num_block_records} x retriever_proj_size="
                             f"{self.retriever_proj_size} is a block_emb of more than {MAX_BLOCK_EMB_BYTES:,} bytes; "
                             "check config.json (google's open-QA checkpoints hold 13,353,718 x 128).")

    def validate_retriever_pooling(self):
        if self.retriever_pooling not in RETRIEVER_POOLINGS:
            raise ValueError(f"RealmConfig.retriever_pooling={self.retriever_pooling!r} is not supported; use 'cls' "
                             "(the pooler over [CLS], google's checkpoints) or 'mean' (mean of the token states over "
                             "the attention mask, sentence encoders).")

    def validate_precision(self):
        check_precision(self.precision)

    def validate_position_embedding_type(self):
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"RealmConfig.position_embedding_type={self.position_embedding_type!r} is not supported: REALM's "
                "checkpoints use 'absolute', and transformers 5's BERT layers no longer build the relative_key / "
                "relative_key_query distance embeddings, so such a model would silently compute something else. "
                "Use position_embedding_type='absolute', or transformers 4.57.6 for relative position embeddings."
            )

    def validate_attention_heads(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"RealmConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                f"RealmConfig.num_attention_heads ({self.num_attention_heads}); change one of the two."
            )

    def validate_dropout(self):
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"RealmConfig.{name} must lie in [0, 1), got {value}.")

    def validate_hidden_act(self):
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"RealmConfig.hidden_act={self.hidden_act!r} is not a known activation; use one of "
                f"'gelu_new' (google's checkpoints), 'gelu', 'relu', ..."
            )

    def validate_beams(self):
        if self.reader_beam_size > self.searcher_beam_size:
            raise ValueError(
                f"RealmConfig.reader_beam_size ({self.reader_beam_size}) cannot exceed "
                f"RealmConfig.searcher_beam_size ({self.searcher_beam_size}): the reader reads the top blocks "
                "of the searcher's beam."
            )
        if self.max_span_width > self.reader_seq_len:
            raise ValueError(
                f"RealmConfig.max_span_width ({self.max_span_width}) cannot exceed "
                f"RealmConfig.reader_seq_len ({self.reader_seq_len})."
            )


@functools.cache
def _field_names() -> tuple[frozenset, frozenset]:
    """RealmConfig's fields, and the other keys PreTrainedConfig consumes or keeps by convention (computed once per
    process)."""
    known = frozenset(f.name for f in dataclasses.fields(RealmConfig))
    standard = frozenset(f.name for f in dataclasses.fields(PreTrainedConfig)) | STANDARD_CONFIG_KEYS
    return known, SERIALIZATION_KEYS | standard | frozenset(GenerationConfig._get_default_generation_params())


def _warn_unknown_fields(kwargs: dict) -> None:
    """Log the keyword arguments no REALM model reads (a misspelt field is kept as an attribute, as transformers
    does for every config, so the mistake would otherwise pass silently)."""
    if not kwargs:
        return
    known, ignored = _field_names()
    for name in sorted(set(kwargs) - known - ignored):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        logger.warning("RealmConfig got an unknown field %r: %sit is kept as an attribute, but no REALM model "
                       "reads it.", name, hint)


__all__ = ["RealmConfig"]
