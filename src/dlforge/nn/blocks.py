"""Transformer building blocks: normalisation, feed-forward networks and the residual block.

`TransformerBlock` is shared by GPT (causal self-attention), BERT-style encoders (bidirectional
self-attention) and encoder–decoder decoders (self-attention + cross-attention). Pre-LN
(x + f(LN(x)), GPT-2) and post-LN (LN(x + f(x)), the original Transformer and BERT) are both
supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from .attention import MultiHeadAttention
from .linear import Linear, linear_activation
from .outputs import StackOutputs
from .positional import RotaryEmbedding

ACTIVATIONS = ("gelu", "gelu_new", "relu", "swiglu", "geglu")
# gated variants: act(x W_gate) * (x W_up); geglu is T5 v1.1's "gated-gelu" (tanh-approximated GELU)
GATES = {"swiglu": F.silu, "geglu": lambda x: F.gelu(x, approximate="tanh")}


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) * g  (Zhang & Sennrich, 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise DlforgeError(f"unknown norm {kind!r}: use 'layernorm' or 'rmsnorm'")


class MLP(nn.Module):
    """Position-wise feed-forward network: c_proj(act(c_fc(x))).

    gelu: exact erf GELU; gelu_new: the tanh approximation GPT-2 uses; relu; swiglu:
    silu(x W_gate) * (x W_up) and geglu: gelu_tanh(x W_gate) * (x W_up) (Shazeer, 2020), with gate
    and up fused into one `c_fc` (gate rows first).
    """

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise DlforgeError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.c_fc = Linear(dim, 2 * hidden if activation in GATES else hidden, bias=bias)
        self.c_proj = Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if self.activation in GATES:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            h = GATES[self.activation](gate) * up
        else:
            h = linear_activation(x, self.c_fc, self.activation)  # (..., hidden)
        return self.dropout(self.c_proj(h))


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) and an MLP, each wrapped in a residual."""

    def __init__(self, dim: int, n_heads: int, mlp_hidden: int | None = None, activation: str = "gelu",
                 norm: str = "layernorm", norm_eps: float = 1e-5, pre_ln: bool = True, bias: bool = True,
                 dropout: float = 0.0, cross_attention: bool = False, context_dim: int | None = None,
                 rotary: RotaryEmbedding | None = None, attn_inner_dim: int | None = None,
                 attn_scale: float | None = None):
        super().__init__()
        self.pre_ln = pre_ln
        self.ln_1 = make_norm(norm, dim, norm_eps, bias)
        self.attn = MultiHeadAttention(dim, n_heads, bias=bias, dropout=dropout, rotary=rotary,
                                       inner_dim=attn_inner_dim, scale=attn_scale)
        if cross_attention:
            self.ln_cross = make_norm(norm, dim, norm_eps, bias)
            self.cross_attn = MultiHeadAttention(dim, n_heads, bias=bias, dropout=dropout, cross=True,
                                                 context_dim=context_dim, inner_dim=attn_inner_dim,
                                                 scale=attn_scale)
        else:
            self.cross_attn = None
        self.ln_2 = make_norm(norm, dim, norm_eps, bias)
        self.mlp = MLP(dim, mlp_hidden or 4 * dim, activation, bias, dropout)

    def _residual(self, x, norm, sublayer, *args, **kwargs):
        if self.pre_ln:
            return x + sublayer(norm(x), *args, **kwargs)
        return norm(x + sublayer(x, *args, **kwargs))

    def forward(self, x, attn_mask=None, causal=False, kv_cache=None, layer_idx=0, positions=None,
                context=None, context_mask=None, outputs: StackOutputs | None = None):
        """x: (B, T, dim) -> (B, T, dim). context: the encoder output (B, S, d) or the cross-attention's
        `project_context` of it; context_mask: boolean or additive mask over its S positions. outputs: where
        the attention probabilities go when they are asked for."""
        self_weights = outputs.attentions if outputs is not None else None
        x = self._residual(x, self.ln_1, self.attn, attn_mask=attn_mask, causal=causal, kv_cache=kv_cache,
                           layer_idx=layer_idx, positions=positions, weights_into=self_weights)
        if self.cross_attn is not None:
            cross_weights = outputs.cross_attentions if outputs is not None else None
            x = self._residual(x, self.ln_cross, self.cross_attn, context=context, attn_mask=context_mask,
                               weights_into=cross_weights)
        return self._residual(x, self.ln_2, self.mlp)
