"""Multi-head attention for every transformer family, with masks and a key/value cache.

Attention(Q, K, V) = softmax(Q Kᵀ / √d_head + M) V  (Vaswani et al., 2017), computed per head.

Three paths compute the same thing:
- the fast path, `torch.nn.functional.scaled_dot_product_attention` (fused kernels);
- `attention_batch_chunks`, for bf16 inference on CPU with short sequences (an encoder's 128 tokens): the
  formula in bf16, a few sequences at a time so that each chunk's scores stay in the core's cache. PyTorch's
  CPU flash kernel is tuned for long sequences; at 32 × 12 heads × 128² with head size 32 it takes about
  8 ms here where this takes 4 ms (benchmarks/RESULTS.md §4);
- `attention_upcast`, for bf16/fp16 inference on CPU with a few queries per row (decoding): the formula on fp32
  copies. Both the flash kernel and bf16's batched matmuls handle one query against a cache slowly; one query
  of 32 beams × 8 heads against 32 cached keys takes 470 µs in SDPA and 150 µs this way (RESULTS.md §11);
- `attention_reference`, the formula written out, which the tests compare the fast paths against;
  `attention_with_weights` is the same and also returns the probabilities, which a layer computes only when its
  caller asks for them (`output_attentions=True`, see `dlforge.nn.outputs`).

Masks follow the SDPA convention: a boolean tensor broadcastable to (B, H, T_q, T_k) where True
means "this query may attend to this key". `build_attention_mask` combines a causal mask with a
key-padding mask once per forward pass, so the layers do not rebuild it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from .linear import Linear
from .positional import RotaryEmbedding


def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
    """softmax(QKᵀ·scale + mask), (B, H, Tq, Tk). scale defaults to 1/√d. A boolean mask keeps True
    positions; a float mask is added to the scores (T5's relative position bias, -inf where masked)."""
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, Tq, Tk)
    if is_causal:
        attn_mask = build_attention_mask(q.size(-2), k.size(-2), causal=True, device=q.device)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return scores.softmax(dim=-1).to(q.dtype)


def attention_with_weights(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None):
    """(softmax(QKᵀ·scale + mask) V, the probabilities (B, H, Tq, Tk) after dropout), written out.
    q: (B, H, Tq, D); k, v: (B, H, Tk, D)."""
    weights = attention_weights(q, k, attn_mask, is_causal, scale)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def attention_reference(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None):
    """softmax(QKᵀ·scale + mask) V written out. q: (B, H, Tq, D); k, v: (B, H, Tk, D)."""
    return attention_with_weights(q, k, v, attn_mask, is_causal, dropout_p, scale)[0]


SCORE_CHUNK_ELEMENTS = 1 << 20  # scores per chunk in `attention_batch_chunks`: 2 MiB of bf16, within L2
FEW_QUERIES = 16  # below this many queries per row (decoding) `attention_upcast` serves, from it the batch chunks


def cpu_inference_attention(q, k, attn_mask, dropout_p):
    """The written-out path that serves a low-precision CPU inference call, or None where SDPA does: fp32 copies
    for a few queries per row (bf16 or fp16), batch chunks for a sequence's worth when one sequence's scores
    (H, Tq, Tk) fit a chunk (bf16, with a boolean or bf16 mask)."""
    if (torch.is_grad_enabled() or q.device.type != "cpu" or dropout_p != 0.0 or q.dim() != 4
            or q.dtype not in (torch.bfloat16, torch.float16)):
        return None
    if q.size(-2) < FEW_QUERIES:
        return attention_upcast
    if (q.dtype == torch.bfloat16 and q.size(1) * q.size(2) * k.size(2) <= SCORE_CHUNK_ELEMENTS
            and (attn_mask is None or attn_mask.dtype == torch.bool or attn_mask.dtype == q.dtype)):
        return attention_batch_chunks
    return None


def attention_upcast(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None):
    """`attention_reference` on fp32 copies of q, k, v, returned in q's dtype. Inference only: no dropout."""
    if dropout_p:
        raise DlforgeError("attention_upcast is for inference: use scaled_dot_product_attention with dropout")
    return attention_reference(q.float(), k.float(), v.float(), attn_mask, is_causal, scale=scale).to(q.dtype)


def attention_batch_chunks(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None):
    """softmax(QKᵀ·scale + mask) V in q's dtype, over chunks of the batch. q: (B, H, Tq, D); k, v: (B, H, Tk, D).

    The masks are those of `attention_reference`; a float mask must have q's dtype. Inference only: no dropout."""
    if dropout_p:
        raise DlforgeError("attention_batch_chunks is for inference: use scaled_dot_product_attention with dropout")
    B, H, Tq, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    if is_causal:
        attn_mask = build_attention_mask(Tq, k.size(2), causal=True, device=q.device)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # additive: 0 where allowed, -inf where not
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_mask, float("-inf"))
    rows = max(1, SCORE_CHUNK_ELEMENTS // (H * Tq * k.size(2)))
    out = torch.empty(B, H, Tq, v.size(-1), dtype=q.dtype, device=q.device)
    for start in range(0, B, rows):
        part = slice(start, start + rows)
        scores = torch.matmul(q[part] * scale, k[part].transpose(-2, -1))  # (rows, H, Tq, Tk)
        if attn_mask is not None:
            scores += attn_mask if attn_mask.size(0) == 1 else attn_mask[part]
        torch.matmul(torch.softmax(scores, dim=-1), v[part], out=out[part])
    return out


def build_attention_mask(q_len: int, k_len: int, causal: bool, key_padding_mask=None, device=None):
    """Boolean mask (B or 1, 1, Tq, Tk), True = may attend; None when nothing is masked.

    The causal part is aligned to the end: query i sits at position k_len - q_len + i, which is
    what decoding with a cache of earlier keys needs. `key_padding_mask` is (B, Tk) with True
    (or 1) on real tokens. With a causal mask each query also sees its own position, so rows of
    left padding never become all-masked (that would give NaN); without one, padding queries attend
    to the real tokens like Hugging Face models do (a row of padding only sees itself).
    """
    if not causal and key_padding_mask is None:
        return None
    device = key_padding_mask.device if key_padding_mask is not None else device
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device).unsqueeze(1) + offset  # (Tq, 1)
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)  # (1, Tk)
    mask = (k_pos <= q_pos) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    mask = mask.view(1, 1, q_len, k_len)
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.bool().view(-1, 1, 1, k_len)
        diagonal = (k_pos == q_pos).view(1, 1, q_len, k_len)
        if causal:  # a left-padding query would otherwise see no key at all
            mask = mask | diagonal
        else:  # only a row that is padding throughout would see no key
            all_padding = ~key_padding_mask.bool().any(dim=-1)
            mask = mask | (all_padding.view(-1, 1, 1, 1) & diagonal)
    return mask


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding.

    Buffers are (B, H, max_len, D) and filled in place, so a decoding step appends without
    reallocating. Each layer calls `update`; the model calls `advance` once all layers are done.
    """

    def __init__(self, n_layers, batch_size, n_heads, max_len, head_dim, dtype=torch.float32, device=None):
        shape = (batch_size, n_heads, max_len, head_dim)
        # uninitialised: only positions below `length` are ever read, and zeroing costs ~20 ms for GPT-2
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # tokens stored so far

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, D) after the cached ones; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise DlforgeError(f"KV cache full: {end} tokens > max_len {self.max_len}; make the cache longer "
                               "(new_kv_cache(max_len=...)) or generate fewer tokens")
        self.keys[layer_idx][:, :, start:end] = k
        self.values[layer_idx][:, :, start:end] = v
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row rows[i] of every buffer as row i (beam search: each beam continues some earlier beam)."""
        filled = slice(0, self.length)  # only the stored positions: the rest of the buffer is never read
        for buffer in (*self.keys, *self.values):
            buffer[:, :, filled] = buffer[:, :, filled].index_select(0, rows)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with a fused projection.

    Self-attention projects Q, K and V with one (d, 3d) linear `c_attn`; cross-attention projects
    Q from the decoder (`q_proj`) and K, V from the encoder output with one (d_kv, 2d) linear
    `kv_proj`. `c_proj` maps the concatenated heads back to d. `inner_dim` (default dim) is the
    width of the heads together, which T5 lets differ from the model width. `scale` multiplies the
    scores (default 1/√head_dim; T5 uses 1).

    Cross-attention's keys and values depend only on the encoder output: `project_context` computes
    them once per source, and `forward(context=(k, v))` reuses them at every decoding step. When x has
    c rows per source (beams), k and v may be given once per source: the c rows' queries then attend
    together (no copies of the keys, one larger attention call instead of c small ones).
    Given a list as `weights_into`, the layer computes attention written out and appends its probabilities
    (B, H, Tq, Tk) to it (`output_attentions`); otherwise it takes a fast path.
    """

    def __init__(self, dim: int, n_heads: int, bias: bool = True, dropout: float = 0.0,
                 cross: bool = False, context_dim: int | None = None, rotary: RotaryEmbedding | None = None,
                 inner_dim: int | None = None, scale: float | None = None):
        super().__init__()
        inner = inner_dim or dim
        if inner % n_heads:
            raise DlforgeError(f"attention width {inner} is not divisible by the number of heads {n_heads}: "
                               "choose a head count that divides it")
        self.n_heads, self.head_dim, self.cross, self.inner = n_heads, inner // n_heads, cross, inner
        if cross:
            self.q_proj = Linear(dim, inner, bias=bias)
            self.kv_proj = Linear(context_dim or dim, 2 * inner, bias=bias)
        else:
            self.c_attn = Linear(dim, 3 * inner, bias=bias)
        self.c_proj = Linear(inner, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.rotary = rotary
        self.scale = scale
        self.use_sdpa = True  # tests switch this off to compare against attention_reference

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of an encoder output (B, S, d_kv): 2 × (B, H, S, D)."""
        k, v = self.kv_proj(context).split(self.inner, dim=2)
        return self._split_heads(k), self._split_heads(v)

    def forward(self, x, context=None, attn_mask=None, causal=False, kv_cache: KVCache | None = None,
                layer_idx: int = 0, positions=None, weights_into: list | None = None):
        """x: (B, T, dim). context: (B, S, context_dim) for cross-attention, or its `project_context`.

        attn_mask: boolean (B or 1, 1, T, Tk), True = may attend, or a float tensor added to the
        scores, or None. With no mask, `causal` selects the triangular mask (only used when queries
        and keys have the same length). weights_into: a list that receives the probabilities (B, H, T, Tk).
        """
        B, T, _ = x.shape
        if self.cross:
            q = self._split_heads(self.q_proj(x))
            k, v = context if isinstance(context, tuple) else self.project_context(context)
        else:
            q, k, v = (self._split_heads(t) for t in self.c_attn(x).split(self.inner, dim=2))  # 3 × (B, H, T, D)
            if self.rotary is not None:
                q, k = self.rotary(q, k, positions)
            if kv_cache is not None:
                k, v = kv_cache.update(layer_idx, k, v)  # (B, H, Tk, D) with Tk = cached + T
        if causal and attn_mask is None and T > 1 and k.size(2) != T:  # chunk after cached tokens
            attn_mask = build_attention_mask(T, k.size(2), causal=True, device=x.device)
        is_causal = causal and attn_mask is None and T > 1
        dropout_p = self.dropout if self.training else 0.0
        copies = B // k.size(0)
        if copies > 1:  # beams of one source share its keys: all their queries attend in one row, (B/c, H, c·T, D)
            q = q.view(-1, copies, self.n_heads, T, self.head_dim).transpose(1, 2).flatten(2, 3)
        if weights_into is not None:  # the probabilities are asked for: SDPA never materialises them
            y, weights = attention_with_weights(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                dropout_p=dropout_p, scale=self.scale)
            if copies > 1:  # (B/c, H, c·T, Tk) -> (B, H, T, Tk), one row per beam again
                weights = weights.view(-1, self.n_heads, copies, T, weights.size(-1)).transpose(1, 2).flatten(0, 1)
            weights_into.append(weights)
        else:
            if not self.use_sdpa:
                attend = attention_reference
            else:
                attend = cpu_inference_attention(q, k, attn_mask, dropout_p) or F.scaled_dot_product_attention
            y = attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p,
                       scale=self.scale)  # (B, H, T, D)
        if copies > 1:
            y = y.view(-1, self.n_heads, copies, T, self.head_dim).transpose(1, 2).flatten(0, 1)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.inner)
        return self.resid_dropout(self.c_proj(y))
