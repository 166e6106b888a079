"""Positional encodings shared by every transformer family.

- `SinusoidalPositionalEncoding`: the fixed sin/cos table of Vaswani et al. (2017),
  PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).
- `LearnedPositionalEmbedding`: one trained vector per position (GPT-2, BERT).
- `RotaryEmbedding`: RoPE (Su et al., 2021). Rotates each (x_i, x_{i+d/2}) pair of the query
  and key by an angle pos * base^(-2i/d), so q·k depends only on the relative position. We use
  the "rotate half" layout (GPT-NeoX, Llama).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import DlforgeError


def sinusoidal_table(max_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(max_len, dim) table with sin in even columns and cos in odd columns."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))  # (dim/2,)
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos encodings; `forward(positions)` returns (..., dim)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        # not persistent: it is a pure function of (max_len, dim), so checkpoints need not store it
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained vector per position; `forward(positions)` returns (..., dim)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__(max_len, dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding applied to queries and keys inside attention."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise DlforgeError(f"rotary embeddings need an even head dimension, got {head_dim}: choose n_embd and "
                               "n_head so that n_embd / n_head is even")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, D): same angle for x_i and x_{i+D/2}
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([-second, first], dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        """q, k: (B, H, T, D); positions: (T,) or (B, T). Returns rotated (q, k)."""
        cos = self.cos[positions].to(q.dtype)  # (T, D) or (B, T, D)
        sin = self.sin[positions].to(q.dtype)
        if cos.dim() == 3:  # per-sequence positions (left padding): broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        return q, k
