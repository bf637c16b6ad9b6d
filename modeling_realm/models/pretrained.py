"""`RealmPreTrainedModel` and the small helpers every REALM tower shares.

Every tower is transformers 5's own `BertModel` stored under the name `realm`, so state-dict names
(`realm.embeddings.*`, `realm.encoder.layer.N.*`, `realm.pooler.*`) are those of transformers 4.x REALM.
"""

import contextlib
import threading

from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.bert.modeling_bert import BertLMPredictionHead, BertModel

from modeling_realm.hub.sharing import push_model, save_for_sharing
from modeling_realm.models.checkpoint_checks import check_local_checkpoint
from modeling_realm.models.configuration import RealmConfig
from modeling_realm.models.precision import check_precision, float32_weights, set_precision
from modeling_realm.models.tf_checkpoint import load_tf_checkpoint

# Ties inside every `cls.predictions` head, as in 4.x (`decoder.bias` is the head's `bias`).
PREDICTION_BIAS_TIE = {"cls.predictions.decoder.bias": "cls.predictions.bias"}


class RealmPreTrainedModel(PreTrainedModel):
    """Base class: weight initialisation, loading rules and input checks shared by the REALM models."""

    config: RealmConfig
    config_class = RealmConfig
    base_model_prefix = "realm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)

    def post_init(self):
        super().post_init()
        if self.config.precision != "float32":
            set_precision(self, self.config.precision)

    def set_precision(self, precision: str):
        """Run this model's BERT backbones (every tower: the reader and the question tower of `RealmForOpenQA`) in
        "bfloat16" (weights rounded in place; the fastest on CPUs with AVX-512 BF16 and on GPUs), "int8" (CPU only,
        for CPUs without bfloat16 arithmetic) or "float32" (the default, exact), for inference. The setting is
        recorded in `config.precision`; `save_pretrained` writes float32 weights and `from_pretrained` applies it
        again. Returns the model. See `models/precision.py`.
        """
        set_precision(self, precision)
        self.config.precision = precision
        return self

    def _resolve_return_dict(self, return_dict):
        return return_dict if return_dict is not None else self.config.return_dict

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`; a local directory is checked first (config.json present, safetensors
        readable, saved by a class whose weights this one uses: `checkpoint_checks`).

        With `from_tf=True`, `pretrained_model_name_or_path` is a google TensorFlow checkpoint (or a list of them),
        read by `from_tf_checkpoint` (only `config` and `verify_checksums` apply then).

        With `precision="int8" | "bfloat16" | "float32"`, the loaded model runs at that precision (`set_precision`);
        by default at the one saved in its config.
        """
        if kwargs.pop("from_tf", False):
            return cls._from_tf_arguments(pretrained_model_name_or_path, args, kwargs)
        precision = kwargs.pop("precision", None)
        if precision is not None and kwargs.get("config") is None:
            kwargs["precision"] = check_precision(precision)  # into the loaded config: the model is built with it
        check_local_checkpoint(pretrained_model_name_or_path, cls.__name__,
                               config_given=kwargs.get("config") is not None)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if precision is not None:
            (loaded[0] if isinstance(loaded, tuple) else loaded).set_precision(precision)
        return loaded

    @classmethod
    def from_tf_checkpoint(cls, checkpoint, config: RealmConfig | None = None, verify_checksums: bool = True):
        """This class with the weights of google's original TensorFlow REALM/ORQA checkpoint, in eval mode.

        `checkpoint`: a checkpoint directory, a prefix (`dir/model.ckpt-1000`), its `.index` file, or a list of
        them (an open-QA model with its `encoded.ckpt` of block embeddings). TensorFlow is not needed. The sizes
        come from `config`, or else from the weights. See `models/tf_checkpoint.py` and docs/models.md.
        """
        return load_tf_checkpoint(cls, checkpoint, config=config, verify=verify_checksums)

    @classmethod
    def _from_tf_arguments(cls, checkpoint, args, kwargs):
        options = {k: kwargs.pop(k) for k in ("config", "verify_checksums") if k in kwargs}
        if args or kwargs:
            raise TypeError(f"from_pretrained(..., from_tf=True) takes only config and verify_checksums, not "
                            f"{sorted(kwargs) or list(args)}; load the TensorFlow checkpoint, then call "
                            "save_pretrained and from_pretrained with those arguments.")
        return cls.from_tf_checkpoint(checkpoint, **options)

    def save_pretrained(self, save_directory, *args, tokenizer=None, model_card: bool = True, **kwargs):
        """transformers' `save_pretrained` (model.safetensors, config.json), plus what sharing needs.

        Also writes `tokenizer`'s files when one is given, the model's code files with an `auto_map` in config.json
        (so `AutoModel.from_pretrained(path, trust_remote_code=True)` loads it without realm-hf), and a README.md
        model card unless `model_card=False`. `repo_id` names the model in the card (default: `save_directory`);
        `push_to_hub=True` pushes the folder as transformers does.
        """
        with float32_weights(self):  # a bfloat16 backbone is saved in float32 (exactly), with config.precision
            save_for_sharing(self, super().save_pretrained, save_directory, *args, tokenizer=tokenizer,
                             write_card=model_card, **kwargs)

    def push_to_hub(self, repo_id: str, *, tokenizer=None, model_card: bool = True, **kwargs):
        """Upload the model (and `tokenizer`), its code and a model card to the Hub repository `repo_id`, in one
        commit. Keyword arguments are transformers' (`commit_message`, `private`, `token`, `revision`, `create_pr`,
        `max_shard_size`, `tags`, ...). With `model_card=False` the repository's README.md is left as it is.
        Returns huggingface_hub's `CommitInfo`."""
        return push_model(self, repo_id, tokenizer=tokenizer, write_card=model_card, **kwargs)


class BackboneEmbeddingsMixin:
    """Embedding accessors of a model whose BERT is `self.realm` and whose unused MLM head is `self.cls.predictions`
    (RealmEmbedder, RealmReader): `resize_token_embeddings` resizes that head with the vocabulary, so a resized model
    saves and reloads (it is never tied to the word embeddings, as in 4.x)."""

    def get_input_embeddings(self):
        return self.realm.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.realm.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias


def build_backbone(config: RealmConfig) -> BertModel:
    """The BERT encoder of one REALM tower (with pooler, as all of google's checkpoints have one)."""
    bert = BertModel(config, add_pooling_layer=True)
    if config.hidden_act == "gelu_new":
        use_fused_tanh_gelu(bert)
    return bert


def use_fused_tanh_gelu(bert: BertModel) -> None:
    """Compute REALM's `gelu_new` (the tanh approximation of GELU) with torch's fused kernel.

    transformers spells `gelu_new` out in Python, eight passes over the `[batch, seq, intermediate]` activations;
    `gelu(approximate="tanh")` is the same function in one pass (outputs agree to ~2e-7). On CPU that is ~17% of a
    BERT-base forward pass, ~20-30% once its matrix products run in int8 (benchmarks/README.md, section 6). The
    config keeps `gelu_new`, so checkpoints stay as they were.
    """
    fused = ACT2FN["gelu_pytorch_tanh"]
    for layer in bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = fused


def run_backbone(bert, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None):
    """Call a transformers 5 `BertModel` with the 4.x REALM argument set.

    Returns a `BaseModelOutputWithPoolingAndCrossAttentions` (`last_hidden_state` `[batch, seq, hidden]`,
    `pooler_output` `[batch, hidden]`).
    """
    if head_mask is not None:
        raise ValueError(
            "head_mask is not supported: transformers 5 removed head masking from the BERT layers REALM is "
            "built on. Pass head_mask=None (the default)."
        )
    flags = {}
    if output_attentions is not None:
        flags["output_attentions"] = output_attentions
    if output_hidden_states is not None:
        flags["output_hidden_states"] = output_hidden_states
    return bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **flags)


def check_rank(name: str, tensor, ranks: tuple[int, ...], layout: str):
    """Raise a ValueError naming `name` when `tensor` is given with a rank outside `ranks`."""
    if tensor is not None and tensor.dim() not in ranks:
        raise ValueError(f"{name} must have shape {layout}, got a tensor of shape {tuple(tensor.shape)}.")


def flatten_candidates(*tensors):
    """View every `[batch, num_candidates, ...]` tensor as `[batch * num_candidates, ...]` (None stays None)."""
    flat = []
    for tensor in tensors:
        if tensor is not None and tensor.dim() > 2:
            # [batch, num_candidates, seq] -> [batch * num_candidates, seq]
            tensor = tensor.reshape(-1, tensor.shape[-1])
        flat.append(tensor)
    return flat


_MODE_LOCK = threading.Lock()


@contextlib.contextmanager
def evaluation_mode(module: nn.Module):
    """Switch `module` to eval mode (no dropout) for the block, then restore its previous mode.

    Safe across threads: while several threads are inside for one module, it stays in eval mode; the first one in
    records the mode and the last one out restores it.
    """
    state = module.__dict__  # plain attributes, never parameters or buffers
    with _MODE_LOCK:
        if state.get("_evaluation_depth", 0) == 0:
            state["_evaluation_restore"] = module.training
            module.eval()
        state["_evaluation_depth"] = state.get("_evaluation_depth", 0) + 1
    try:
        yield module
    finally:
        with _MODE_LOCK:
            state["_evaluation_depth"] -= 1
            if state["_evaluation_depth"] == 0:
                module.train(state.pop("_evaluation_restore"))


def resize_towers(model, towers, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
    """`resize_token_embeddings` of a model made of towers (`RealmEmbedder`s, `RealmReader`): every distinct tower
    is resized (its unused MLM head too) and the model's config follows. Returns the first tower's embeddings."""
    distinct = list({id(tower): tower for tower in towers}.values())
    resized = [tower.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing) for tower in distinct]
    model.config.vocab_size = resized[0].weight.shape[0]
    return resized[0]
