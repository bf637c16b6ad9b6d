"""The precision switch: how a model's BERT backbones (the reader and the question tower of `RealmForOpenQA`) run at
inference. `set_precision(model, precision)` switches every `BertModel` inside `model`:

- "bfloat16": the backbone's weights rounded to bfloat16 in place, its whole forward pass in bfloat16 (matrix
  products, attention, LayerNorm, GELU), its outputs returned in float32, so the heads, relevance scores and
  retrieval stay float32. The fastest on CPUs with AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake and later: ~3.5x
  float32 for the reader, benchmarks/bench_cpu_backends.py); meant for GPUs too (written, not run on one yet).
- "int8": the backbone's weights stay float32; each `nn.Linear` of its encoder layers runs on an int8 copy of its
  weight (per output channel) and int8 activations (per row, quantized at every call), the product in int32 by
  `torch._int_mm` and rescaled to float32. ~1.8x float32, for CPUs without bfloat16 arithmetic. CPU only.
- "float32": back to float32 (after "bfloat16" the weights keep their bfloat16 rounding: reload the model to get
  the original float32 values).

A switched backbone is for inference: its forward raises in training mode. `save_pretrained` writes float32
weights (bfloat16 values are exact in float32) and `config.precision`, and `from_pretrained` switches again.
"""

import contextlib

import torch
from torch import nn

PRECISIONS = ("float32", "bfloat16", "int8")
INT8_MAX = 127.0
PRECISION_ATTRIBUTE = "_realm_precision"  # set on a switched BertModel: its precision
HOOKS_ATTRIBUTE = "_realm_precision_hooks"  # the hook handles of a bfloat16 BertModel


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError listing them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use one of {', '.join(map(repr, PRECISIONS))} "
                         "('bfloat16': fastest on CPUs with AVX-512 BF16 and on GPUs, 'int8': CPUs without "
                         "bfloat16 arithmetic, 'float32': exact).")
    return precision


def refuse_training(module: nn.Module, precision: str) -> None:
    if module.training:
        raise RuntimeError(f"This model runs at precision={precision!r}, which is for inference only; call "
                           "model.eval() to answer, or model.set_precision('float32') before training it.")


# ------------------------------------------------------------------------------------------------ int8
class Int8Linear(nn.Linear):
    """y = x W^T + b with x quantized per row and W per output channel to int8; CPU only.

    Holds the float32 `weight` and `bias` Parameters of the Linear it replaces (the state dict is unchanged); the
    int8 copy of the weight is made at the first forward and again whenever the weight changes, so it is never stale.
    """

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters
        self.training = linear.training
        self._cache_key, self._cache = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_training(self, "int8")
        key = (id(self.weight), self.weight._version, self.weight.data_ptr(), self.weight.device)
        if key != self._cache_key:
            self._cache, self._cache_key = self._quantize(self.weight.detach()), key
        quantized, weight_scale = self._cache
        shape = x.shape
        # [rows, in]
        rows = x.reshape(-1, shape[-1]).float()
        # [rows, 1]
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12) / INT8_MAX
        # [rows, in] int8
        rows_int8 = (rows / row_scale).round_().to(torch.int8)
        # [rows, out] int32 -> float32; the right operand [in, out] is column-major, torch._int_mm's fast layout
        out = torch._int_mm(rows_int8, quantized.t()).float()
        out.mul_(row_scale).mul_(weight_scale)
        if self.bias is not None:
            out.add_(self.bias.detach().float())
        return out.view(*shape[:-1], self.out_features).to(x.dtype)

    @staticmethod
    def _quantize(weight: torch.Tensor):
        """weight `[out, in]` -> (int8 `[out, in]`, scale `[out]`)."""
        if weight.device.type != "cpu":
            raise RuntimeError(f"precision='int8' runs on CPU only and this layer is on {weight.device}; use "
                               "model.set_precision('bfloat16') on a GPU.")
        weight = weight.float()
        # [out]
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / INT8_MAX
        # [out, in]
        quantized = (weight / scale[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        return quantized, scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, precision=int8"


def encoder_linears(bert: nn.Module):
    """(parent module, attribute name, Linear) of every Linear of a BertModel's encoder layers."""
    for module in bert.encoder.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                yield module, name, child


def plain_linear(linear: nn.Linear) -> nn.Linear:
    """An `nn.Linear` holding the Parameters of `linear` (an Int8Linear's original)."""
    plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    plain.weight, plain.bias, plain.training = linear.weight, linear.bias, linear.training
    return plain


# ------------------------------------------------------------------------------------------------ bfloat16
def _bfloat16_inputs(module, args, kwargs):
    """Forward pre-hook of a bfloat16 BertModel: float inputs (`inputs_embeds`) in bfloat16."""
    refuse_training(module, "bfloat16")
    kwargs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in kwargs.items()}
    return args, kwargs


def _float32_outputs(module, args, kwargs, output):
    """Forward hook of a bfloat16 BertModel: its outputs (`last_hidden_state` `[batch, seq, hidden]`,
    `pooler_output` `[batch, hidden]`, hidden states and attentions) back in float32."""
    for key, value in list(output.items()):
        if torch.is_tensor(value) and value.is_floating_point():
            output[key] = value.float()
        elif isinstance(value, tuple):
            output[key] = tuple(v.float() if torch.is_tensor(v) and v.is_floating_point() else v for v in value)
    return output


# ------------------------------------------------------------------------------------------------ the switch
def backbones(model: nn.Module):
    """Every BERT backbone (`BertModel`, a tower's `realm`) inside `model`."""
    from transformers.models.bert.modeling_bert import BertModel

    return [module for module in model.modules() if isinstance(module, BertModel)]


def switch_backbone(bert: nn.Module, precision: str) -> None:
    """Switch one BertModel to `precision`, undoing its previous switch first."""
    previous = getattr(bert, PRECISION_ATTRIBUTE, "float32")
    if previous == precision:  # e.g. each tower's post_init, then the model's: nothing to copy again
        return
    if previous == "int8":
        for parent, name, linear in list(encoder_linears(bert)):
            setattr(parent, name, plain_linear(linear))
    elif previous == "bfloat16":
        for handle in bert.__dict__.pop(HOOKS_ATTRIBUTE):
            handle.remove()
        bert.float()
    if precision == "int8":
        for parent, name, linear in list(encoder_linears(bert)):
            setattr(parent, name, Int8Linear(linear))
    elif precision == "bfloat16":
        bert.to(torch.bfloat16)
        bert.__dict__[HOOKS_ATTRIBUTE] = (
            bert.register_forward_pre_hook(_bfloat16_inputs, with_kwargs=True),
            bert.register_forward_hook(_float32_outputs, with_kwargs=True))
    bert.__dict__[PRECISION_ATTRIBUTE] = precision


def set_precision(model: nn.Module, precision: str) -> None:
    """Run every BERT backbone of `model` at `precision` (see the module docstring)."""
    check_precision(precision)
    devices = {p.device.type for p in model.parameters()} - {"meta"}  # meta: inside from_pretrained, before loading
    if precision == "int8" and not devices <= {"cpu"}:
        raise ValueError(f"precision='int8' runs on CPU only and the model is on {sorted(devices)}; use "
                         "precision='bfloat16' on a GPU, or move the model to the CPU first.")
    for bert in backbones(model):
        switch_backbone(bert, precision)


def backbone_precision(model: nn.Module) -> str:
    """The precision the backbones of `model` run at ("float32" when it has none or they were never switched)."""
    found = {getattr(bert, PRECISION_ATTRIBUTE, "float32") for bert in backbones(model)}
    return found.pop() if len(found) == 1 else "float32"


@contextlib.contextmanager
def float32_weights(model: nn.Module):
    """Inside the block, bfloat16 backbones of `model` hold float32 weights (the same values: bfloat16 is exact in
    float32), e.g. to save them; afterwards they run in bfloat16 again."""
    switched = [bert for bert in backbones(model) if getattr(bert, PRECISION_ATTRIBUTE, None) == "bfloat16"]
    for bert in switched:
        switch_backbone(bert, "float32")
    try:
        yield model
    finally:
        for bert in switched:
            switch_backbone(bert, "bfloat16")
