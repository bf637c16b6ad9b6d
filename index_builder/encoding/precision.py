"""The precision the block tower encodes in: float32, a reduced `dtype`, or autocast (`mixed_precision`).

Two switches, of which at most one may reduce precision:

- `dtype="bfloat16"` (or `"float16"`, GPU only) runs a copy of the block tower whose weights and activations are
  all in that dtype (the caller's model is left as it is; the copy takes half the float32 tower's memory). On a
  CPU with native bfloat16 (AVX512-BF16 or AMX) this is the faster one: all-MiniLM-L6-v2 at 288 tokens encoded
  ~3.2-3.7x the float32 blocks/s, against ~2.6-2.7x for autocast (benchmarks/README.md section 3).
- `mixed_precision="bf16"` / `"fp16"` (the older switch, kept as it was) runs the float32 tower under
  `torch.autocast`: matrix products in the reduced dtype, layer norms and softmax in float32.

Embeddings are stored as float32 either way. A new precision (an int8 tower, say) is one more entry in `DTYPES`
and a branch in `tower_in`.
"""

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIXED_PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
_AUTOCAST_DTYPE = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Precision:
    """How a tower runs: `dtype` its weights and activations, `mixed_precision` autocast over float32 weights."""

    dtype: str = "float32"
    mixed_precision: str = "no"

    @property
    def reduced(self) -> bool:
        """Whether the embeddings may differ from float32 ones (and the agreement is worth measuring)."""
        return self.compute_dtype != "float32"

    @property
    def compute_dtype(self) -> str:
        """The dtype of the matrix products: "float32", "bfloat16" or "float16"."""
        return self.dtype if self.dtype != "float32" else _AUTOCAST_DTYPE[self.mixed_precision]

    @property
    def autocast(self) -> bool:
        return self.mixed_precision != "no"


def resolve_precision(dtype: str, mixed_precision: str, device) -> Precision:
    """Check `dtype` and `mixed_precision` for `device` (ValueError naming the fix) and return them as a Precision."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {sorted(MIXED_PRECISION)}, got {mixed_precision!r}.")
    if dtype != "float32" and mixed_precision != "no":
        raise ValueError(f"dtype={dtype!r} and mixed_precision={mixed_precision!r} both reduce precision; pass one: "
                         "dtype runs the whole tower in that dtype (faster on CPU), mixed_precision runs autocast "
                         "over float32 weights.")
    if torch.device(device).type == "cpu":
        if dtype == "float16":
            raise ValueError("dtype='float16' needs a GPU; on CPU use dtype='bfloat16' (or 'float32').")
        if mixed_precision == "fp16":
            raise ValueError("fp16 needs a GPU; on CPU use mixed_precision='bf16' or 'no' (or dtype='bfloat16').")
    return Precision(dtype, mixed_precision)


def tower_in(embedder: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """The module that encodes: `embedder` itself in float32, else a copy of it in the reduced dtype."""
    if precision.dtype == "float32":
        return embedder
    return copy.deepcopy(embedder).to(DTYPES[precision.dtype]).eval()


def autocast_for(precision: Precision, device) -> "callable":
    """A context factory: autocast to the mixed-precision dtype on `device`, or nothing."""
    dtype = MIXED_PRECISION[precision.mixed_precision]
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fast_bfloat16(device="cpu") -> bool:
    """Whether `device` computes in bfloat16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (without them torch emulates bfloat16 on a CPU, which can be slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)
