"""`Linear`: `torch.nn.Linear` with a faster CPU path for one-row inputs (token-by-token decoding).

Decoding one token multiplies each weight matrix by a single vector (GEMV), which is bound by
memory bandwidth. PyTorch hands a one-row `F.linear` on CPU to a GEMV kernel that runs on one
core (about 12 GB/s here, a quarter of what the memory delivers). Viewing the weight's output
rows as `GEMV_SPLITS` blocks and multiplying them with one batched matmul spreads the work over
all cores (about 40 GB/s here), with the same result up to float summation order. The fast path
is taken only without autograd, on CPU, for float32 weights and at most `GEMV_MAX_ROWS` rows;
everything else is the ordinary `F.linear`. Parameter names are unchanged, so checkpoints are too.

`linear_activation(x, layer, "gelu")` is act(x Wᵀ + b), the first half of every MLP. On CPU without
autograd it is one oneDNN call that adds the bias and applies the activation while the product is written
(`torch.ops.mkldnn._linear_pointwise`, the kernel torch.compile's CPU backend emits for this pattern),
instead of three passes over a (B, T, 4·d) tensor: all-MiniLM-L6-v2's forward is about 17 % faster in
both bf16 and fp32 (benchmarks/RESULTS.md §4). Training, GPUs and builds without oneDNN take F.linear
and F.gelu; tests/nn/test_linear.py compares both paths. For the same reason `Linear` itself, under the
same conditions, runs as one oneDNN call in bf16: the bias is added inside the kernel instead of F.linear copying the
broadcast bias into the output first (about 7 % of the bf16 encoder forward); in fp32 only for up to
`ONEDNN_FP32_MAX_ROWS` rows, where oneDNN's kernel is about 15 % faster (beam search: 32 × 512 → 32,128) — at an
encoder's thousands of rows it is not.

In bf16, `Linear` hands oneDNN its weight prepacked once into oneDNN's blocked layout (`onednn_weight`): given a
plain row-major weight, oneDNN reorders it inside every call. Prepacked, a bf16 product runs twice as fast at
decoding's few rows (32 × 512 → 32,128: 2.7 ms → 1.3 ms) and about 15 % faster at an encoder's thousands; the
result is the same to the bit. The packed copy is rebuilt when the weight changes (a new tensor, an in-place
update, a dtype change), is not part of the state dict, and is dropped when the layer is copied or pickled.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

GEMV_SPLITS = 8
GEMV_MAX_ROWS = 1
ONEDNN_FP32_MAX_ROWS = 256  # fp32 inputs up to this many rows take oneDNN (bf16: any number)


def split_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weightᵀ + bias for x with one row, as a batched matmul over row blocks of `weight`."""
    out_features, in_features = weight.shape
    lead = x.shape[:-1]
    # (K, 1) as the transpose of a row: bmm takes its fast path for this stride layout only
    vec = x.reshape(1, in_features).t()
    n_even = out_features // GEMV_SPLITS * GEMV_SPLITS
    blocks = weight[:n_even].view(GEMV_SPLITS, n_even // GEMV_SPLITS, in_features)  # (S, N/S, K)
    y = torch.bmm(blocks, vec.expand(GEMV_SPLITS, in_features, 1)).view(n_even)  # (N_even,)
    if n_even < out_features:  # the few rows left over when N is not a multiple of GEMV_SPLITS
        y = torch.cat([y, weight[n_even:] @ x.reshape(in_features)])
    if bias is not None:
        y = y + bias
    return y.view(*lead, out_features)


class Linear(nn.Linear):
    def __getstate__(self):  # the packed weight is an opaque oneDNN tensor: neither copyable nor picklable
        state = dict(super().__getstate__())
        state.pop(PACKED_ATTRIBUTE, None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and x.numel() == self.in_features * GEMV_MAX_ROWS
                and self.out_features >= 4 * GEMV_SPLITS):
            return split_gemv(x, self.weight, self.bias)
        if onednn_fusion_applies(x, self) and (x.dtype == torch.bfloat16 or x.numel() <= ONEDNN_FP32_MAX_ROWS
                                                * self.in_features):
            # oneDNN adds the bias inside the kernel, where F.linear on CPU first copies the broadcast bias into
            # the output (an extra pass over memory); in fp32 only its kernels for few rows (decoding) are faster
            return torch.ops.mkldnn._linear_pointwise(x, onednn_weight(self), self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


ACTIVATION_FUNCTIONS = {"gelu": F.gelu, "gelu_new": functools.partial(F.gelu, approximate="tanh"), "relu": F.relu}
# oneDNN post-op (name, algorithm) of each activation: erf GELU, tanh GELU, ReLU
ONEDNN_POST_OPS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "relu": ("relu", "")}
# whether this torch build has the fused kernel: a property of the build, looked up once, not per forward
HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
HAS_WEIGHT_PACKING = HAS_ONEDNN_LINEAR and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
PACKED_ATTRIBUTE = "_onednn_packed_weight"  # (the weight packed from, that weight's version, the packed copy)


def onednn_weight(layer: nn.Module) -> torch.Tensor:
    """The weight to hand `torch.ops.mkldnn._linear_pointwise`: for a dlforge `Linear` in bf16, the weight prepacked
    into oneDNN's layout (built on first use, rebuilt when the weight changes); otherwise the weight itself."""
    weight = layer.weight
    if not (HAS_WEIGHT_PACKING and weight.dtype == torch.bfloat16 and isinstance(layer, Linear)):
        return weight
    cached = layer.__dict__.get(PACKED_ATTRIBUTE)
    # the cache holds the packed weight's storage alive, so a new weight can never reuse its address unnoticed;
    # in-place updates (optimizer steps, load_state_dict) bump the version counter
    if cached is None or cached[0].data_ptr() != weight.data_ptr() or cached[1] != weight._version:
        source = weight.detach()
        cached = (source, weight._version, torch.ops.mkldnn._reorder_linear_weight(source, None))
        layer.__dict__[PACKED_ATTRIBUTE] = cached
    return cached[2]


def onednn_fusion_applies(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `linear_activation` may use the fused oneDNN kernel: CPU inference outside autocast (under it,
    fp32 weights would make the kernel multiply in fp32, about 4× slower than autocast's bf16 F.linear), a plain
    linear layer, weights and input both float32 or both bfloat16, a contiguous input (in fp32, of more than one
    row: one row takes `split_gemv`, and oneDNN's plain-layout kernel is no faster than F.linear there)."""
    return (HAS_ONEDNN_LINEAR and not torch.is_grad_enabled() and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")  # autocast would run F.linear in bf16; this kernel would not
            and type(layer) in (Linear, nn.Linear) and x.dtype == layer.weight.dtype
            and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous()
            and (x.numel() > layer.in_features or x.dtype == torch.bfloat16))


def linear_activation(x: torch.Tensor, layer: nn.Module, activation: str) -> torch.Tensor:
    """activation(layer(x)) for activation gelu | gelu_new | relu; fused into the product where it can be."""
    if onednn_fusion_applies(x, layer):
        name, algorithm = ONEDNN_POST_OPS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, onednn_weight(layer), layer.bias, name, [], algorithm)
    return ACTIVATION_FUNCTIONS[activation](layer(x))


def linear_plus_bias(x: torch.Tensor, layer: nn.Module, bias: torch.Tensor) -> torch.Tensor:
    """layer(x) + bias for a layer without its own bias (BART's logits bias), added in the kernel where it can be."""
    if layer.bias is None and onednn_fusion_applies(x, layer) and bias.dtype == x.dtype:
        return torch.ops.mkldnn._linear_pointwise(x, onednn_weight(layer), bias, "none", [], "")
    return layer(x) + bias.to(x.dtype)
