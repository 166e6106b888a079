"""Tests for dlforge.nn.attention: SDPA vs the written-out formula, masks, and the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.nn import KVCache, MultiHeadAttention, RotaryEmbedding, attention_reference, build_attention_mask
from dlforge.nn.attention import (
    FEW_QUERIES,
    SCORE_CHUNK_ELEMENTS,
    attention_batch_chunks,
    attention_upcast,
    attention_weights,
    cpu_inference_attention,
)

DIM, HEADS = 32, 4
HEAD_DIM = DIM // HEADS
TOL = 1e-5


def _both_paths(module: MultiHeadAttention, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the module with the fused SDPA path and with `attention_reference`."""
    module.eval()
    with torch.no_grad():
        module.use_sdpa = True
        fast = module(*args, **kwargs)
        module.use_sdpa = False
        ref = module(*args, **kwargs)
    module.use_sdpa = True
    return fast, ref


def _manual_attention(q, k, v, allowed):
    """softmax(q kᵀ/√d) v with a boolean (.., Tq, Tk) mask, spelled out with loops-free einsum."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


# ----------------------------------------------------------------------------- attention_reference


def test_attention_reference_matches_hand_written_formula():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    allowed = torch.ones(5, 5, dtype=torch.bool)
    torch.testing.assert_close(attention_reference(q, k, v), _manual_attention(q, k, v, allowed))
    causal = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    torch.testing.assert_close(attention_reference(q, k, v, is_causal=True), _manual_attention(q, k, v, causal))


def test_attention_reference_agrees_with_torch_sdpa_on_raw_tensors():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    mask = torch.rand(2, 1, 6, 6) > 0.4
    mask |= torch.eye(6, dtype=torch.bool)  # no fully masked row
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (attention_reference(q, k, v, attn_mask=mask) - expected).abs().max() <= TOL


# ----------------------------------------------------------------------------- bf16 batch chunks


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "float"])
def test_batch_chunks_match_reference_across_chunk_boundaries(mask_kind, monkeypatch):
    # chunks of 3 sequences over a batch of 7: the last chunk is short, each chunk takes its rows of the mask
    B, H, T = 7, 4, 16
    monkeypatch.setattr("dlforge.nn.attention.SCORE_CHUNK_ELEMENTS", 3 * H * T * T)
    torch.manual_seed(3)
    q, k, v = (torch.randn(B, H, T, 8).bfloat16() for _ in range(3))
    mask, causal = None, mask_kind == "causal"
    if mask_kind == "padding":
        mask = build_attention_mask(T, T, False, torch.arange(T) < torch.randint(1, T + 1, (B, 1)))
    elif mask_kind == "float":  # an additive bias per head, as T5's relative positions
        mask = torch.randn(1, H, T, T).bfloat16()
    with torch.no_grad():
        assert cpu_inference_attention(q, k, mask, 0.0) is attention_batch_chunks
        got = attention_batch_chunks(q, k, v, attn_mask=mask, is_causal=causal)
    expected = attention_reference(q.float(), k.float(), v.float(), attn_mask=None if mask is None else
                                   (mask if mask.dtype == torch.bool else mask.float()), is_causal=causal)
    assert got.dtype == torch.bfloat16 and (got.float() - expected).abs().max() < 0.03


def test_written_out_paths_serve_only_low_precision_cpu_inference():
    q = torch.randn(2, 4, FEW_QUERIES, 8).bfloat16()
    decode = q[:, :, :1]
    with torch.no_grad():
        assert cpu_inference_attention(q, q, None, 0.0) is attention_batch_chunks
        assert cpu_inference_attention(decode, q, None, 0.0) is attention_upcast  # a few queries: decoding
        assert cpu_inference_attention(decode.half(), q.half(), None, 0.0) is attention_upcast
        assert cpu_inference_attention(q.half(), q.half(), None, 0.0) is None  # fp16 sequences: SDPA
        assert cpu_inference_attention(q.float(), q.float(), None, 0.0) is None  # fp32: SDPA
        assert cpu_inference_attention(decode.float(), q.float(), None, 0.0) is None
        assert cpu_inference_attention(q, q, None, 0.1) is None  # dropout
        assert cpu_inference_attention(q, q, torch.zeros(1, 4, 16, 16), 0.0) is None  # an fp32 bias
        long = torch.empty(1, 4, 1024, 8, dtype=torch.bfloat16)
        assert 4 * 1024 * 1024 > SCORE_CHUNK_ELEMENTS and cpu_inference_attention(long, long, None, 0.0) is None
    assert cpu_inference_attention(q, q, None, 0.0) is None  # training: SDPA
    assert cpu_inference_attention(decode, q, None, 0.0) is None


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "float"])
def test_upcast_decoding_attention_matches_fp32_reference(mask_kind):
    # one new query per row against a slice of a longer cache, as a decoding step reads it
    B, H, Tk = 5, 4, 9
    torch.manual_seed(5)
    q = torch.randn(B, H, 1, 8).bfloat16()
    cache_k, cache_v = (torch.randn(B, H, 20, 8).bfloat16() for _ in range(2))
    k, v = cache_k[:, :, :Tk], cache_v[:, :, :Tk]
    mask, causal = None, mask_kind == "causal"
    if mask_kind == "padding":
        mask = build_attention_mask(1, Tk, True, torch.arange(Tk) >= torch.randint(0, Tk, (B, 1)))
    elif mask_kind == "float":
        mask = torch.randn(1, H, 1, Tk).bfloat16()
    with torch.no_grad():
        got = attention_upcast(q, k, v, attn_mask=mask, is_causal=causal, scale=0.5)
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=0.5)
    expected = attention_reference(q.double(), k.double(), v.double(), attn_mask=None if mask is None else
                                   (mask if mask.dtype == torch.bool else mask.double()), is_causal=causal,
                                   scale=0.5)
    assert got.dtype == torch.bfloat16 and got.shape == (B, H, 1, 8)
    # computed in fp32 and rounded once: no further from the exact value than SDPA's bf16 kernel
    error, sdpa_error = ((t.double() - expected).abs().max() for t in (got, sdpa))
    assert error <= max(sdpa_error, 0.004), (error, sdpa_error)


def test_bf16_module_inference_takes_batch_chunks_and_agrees_with_fp32(monkeypatch):
    calls = []
    monkeypatch.setattr("dlforge.nn.attention.attention_batch_chunks",
                        lambda *a, **kw: calls.append(1) or attention_batch_chunks(*a, **kw))
    torch.manual_seed(4)
    mha = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(3, 20, DIM)
    mask = build_attention_mask(20, 20, False, torch.tensor([[1] * 20, [1] * 5 + [0] * 15, [1] * 2 + [0] * 18]))
    with torch.no_grad():
        expected = mha(x, attn_mask=mask)
        got = mha.bfloat16()(x.bfloat16(), attn_mask=mask)
    assert calls == [1]
    assert (got.float() - expected).abs().max() < 0.05



def test_bf16_cached_decoding_takes_the_upcast_path_and_agrees_with_fp32(monkeypatch):
    calls = []
    monkeypatch.setattr("dlforge.nn.attention.attention_upcast",
                        lambda *a, **kw: calls.append(a[0].size(-2)) or attention_upcast(*a, **kw))
    torch.manual_seed(6)
    mha = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(2, 20, DIM)
    with torch.no_grad():
        expected = mha(x, causal=True)[:, -3:]  # the last 3 positions of a full causal pass, fp32
        mha = mha.bfloat16()
        cache = KVCache(1, 2, HEADS, 20, DIM // HEADS, dtype=torch.bfloat16)
        mha(x[:, :17].bfloat16(), causal=True, kv_cache=cache)  # prefill: batch chunks
        cache.advance(17)
        steps = []
        for t in range(17, 20):  # one token at a time: the upcast path
            steps.append(mha(x[:, t:t + 1].bfloat16(), causal=True, kv_cache=cache))
            cache.advance(1)
    assert calls == [1, 1, 1]
    assert (torch.cat(steps, dim=1).float() - expected).abs().max() < 0.05

# ----------------------------------------------------------------------------- SDPA vs reference


def test_self_attention_causal_sdpa_matches_reference():
    torch.manual_seed(0)
    mha = MultiHeadAttention(DIM, HEADS)
    x = torch.randn(3, 7, DIM)
    fast, ref = _both_paths(mha, x, causal=True)
    assert fast.shape == (3, 7, DIM)
    assert (fast - ref).abs().max() <= TOL
    # and the causal output really differs from the bidirectional one (the flag is not ignored)
    full, _ = _both_paths(mha, x, causal=False)
    assert (full - fast).abs().max() > 1e-3


def test_self_attention_with_padding_mask_sdpa_matches_reference():
    torch.manual_seed(0)
    mha = MultiHeadAttention(DIM, HEADS)
    x = torch.randn(3, 6, DIM)
    key_padding = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    for causal in (True, False):
        mask = build_attention_mask(6, 6, causal=causal, key_padding_mask=key_padding)
        fast, ref = _both_paths(mha, x, attn_mask=mask, causal=causal)
        assert torch.isfinite(fast).all() and torch.isfinite(ref).all()
        assert (fast - ref).abs().max() <= TOL


def test_padding_mask_hides_padded_keys():
    """Real tokens' outputs do not depend on what sits in padded positions."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(1, 6, DIM)
    key_padding = torch.tensor([[0, 0, 1, 1, 1, 1]])
    mask = build_attention_mask(6, 6, causal=True, key_padding_mask=key_padding)
    x2 = x.clone()
    x2[:, :2] = torch.randn(1, 2, DIM) * 10
    with torch.no_grad():
        a, b = mha(x, attn_mask=mask, causal=True), mha(x2, attn_mask=mask, causal=True)
        alone = mha(x[:, 2:], causal=True)
    assert (a[:, 2:] - b[:, 2:]).abs().max() <= TOL
    assert (a[:, 2:] - alone).abs().max() <= TOL


def test_cross_attention_sdpa_matches_reference():
    torch.manual_seed(0)
    ctx_dim = 20
    mha = MultiHeadAttention(DIM, HEADS, cross=True, context_dim=ctx_dim)
    assert mha.kv_proj.in_features == ctx_dim and mha.kv_proj.out_features == 2 * DIM
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 9, ctx_dim)
    fast, ref = _both_paths(mha, x, context=ctx)
    assert fast.shape == (2, 5, DIM)
    assert (fast - ref).abs().max() <= TOL
    # a context padding mask (B, 1, 1, S): row 1 ignores its last 4 context entries
    ctx_mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    ctx_mask[1, ..., 5:] = False
    fast_m, ref_m = _both_paths(mha, x, context=ctx, attn_mask=ctx_mask)
    assert (fast_m - ref_m).abs().max() <= TOL
    alone, _ = _both_paths(mha, x[1:], context=ctx[1:, :5])
    assert (fast_m[1:] - alone).abs().max() <= TOL


def test_cross_attention_matches_manual_projection():
    torch.manual_seed(0)
    mha = MultiHeadAttention(DIM, HEADS, cross=True, context_dim=12).eval()
    x, ctx = torch.randn(1, 3, DIM), torch.randn(1, 4, 12)
    with torch.no_grad():
        out = mha(x, context=ctx)
        q = mha.q_proj(x).view(1, 3, HEADS, HEAD_DIM).transpose(1, 2)
        k, v = mha.kv_proj(ctx).split(DIM, dim=-1)
        k = k.view(1, 4, HEADS, HEAD_DIM).transpose(1, 2)
        v = v.view(1, 4, HEADS, HEAD_DIM).transpose(1, 2)
        y = _manual_attention(q, k, v, torch.ones(3, 4, dtype=torch.bool))
        expected = mha.c_proj(y.transpose(1, 2).reshape(1, 3, DIM))
    assert (out - expected).abs().max() <= TOL


def test_weights_into_receives_the_probabilities_and_leaves_the_output_unchanged():
    """Asked for its probabilities, a layer returns the same output and hands over softmax rows (B, H, T, S); with
    keys given once per source for 3 beams each, every beam's rows come back as if its keys had been copied."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(DIM, HEADS, cross=True, context_dim=12).eval()
    x, ctx = torch.randn(6, 4, DIM), torch.randn(2, 7, 12)  # 2 sources × 3 beams, 4 queries, 7 context tokens
    ctx_mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    ctx_mask[1, ..., 5:] = False
    with torch.no_grad():
        k, v = mha.project_context(ctx)  # (2, H, 7, D), once per source
        plain = mha(x, context=(k, v), attn_mask=ctx_mask)
        shared = []
        out = mha(x, context=(k, v), attn_mask=ctx_mask, weights_into=shared)
        copied = []
        rows = torch.arange(2).repeat_interleave(3)  # beam b reads source b // 3
        mha(x, context=(k[rows], v[rows]), attn_mask=ctx_mask[rows], weights_into=copied)
        q = mha.q_proj(x).view(6, 4, HEADS, HEAD_DIM).transpose(1, 2)
        expected = attention_weights(q, k[rows], ctx_mask[rows])
    assert (out - plain).abs().max() <= TOL
    assert len(shared) == 1 and shared[0].shape == (6, HEADS, 4, 7)
    assert (shared[0] - copied[0]).abs().max() <= TOL and (shared[0] - expected).abs().max() <= TOL
    assert torch.all(shared[0][3:, ..., 5:] == 0)  # the second source's padding gets no attention


def test_rotary_self_attention_sdpa_matches_reference():
    torch.manual_seed(0)
    rotary = RotaryEmbedding(HEAD_DIM, max_len=32)
    mha = MultiHeadAttention(DIM, HEADS, rotary=rotary)
    x = torch.randn(2, 8, DIM)
    positions = torch.arange(8)
    fast, ref = _both_paths(mha, x, causal=True, positions=positions)
    assert (fast - ref).abs().max() <= TOL
    # per-row positions (B, T) equal to the shared ones give the same result
    fast_b, _ = _both_paths(mha, x, causal=True, positions=positions.expand(2, 8))
    assert (fast - fast_b).abs().max() <= TOL
    # shifting the positions of a causal rotary layer changes nothing for relative attention ...
    shifted, _ = _both_paths(mha, x, causal=True, positions=positions + 5)
    assert (fast - shifted).abs().max() <= 1e-4
    # ... but the layer is not position-blind: reversing positions changes the output
    reversed_pos, _ = _both_paths(mha, x, causal=True, positions=positions.flip(0))
    assert (fast - reversed_pos).abs().max() > 1e-3


def test_self_attention_matches_manual_computation():
    torch.manual_seed(0)
    mha = MultiHeadAttention(DIM, HEADS).eval()
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        out = mha(x, causal=True)
        q, k, v = (t.view(2, 5, HEADS, HEAD_DIM).transpose(1, 2) for t in mha.c_attn(x).split(DIM, -1))
        y = _manual_attention(q, k, v, torch.tril(torch.ones(5, 5, dtype=torch.bool)))
        expected = mha.c_proj(y.transpose(1, 2).reshape(2, 5, DIM))
    assert (out - expected).abs().max() <= TOL


def test_width_not_divisible_by_heads_raises():
    with pytest.raises(DlforgeError, match="divisible"):
        MultiHeadAttention(30, 4)


# ----------------------------------------------------------------------------- build_attention_mask


def test_build_attention_mask_none_when_nothing_masked():
    assert build_attention_mask(4, 4, causal=False) is None


def test_build_attention_mask_causal_square_is_lower_triangular():
    mask = build_attention_mask(4, 4, causal=True)
    assert mask.shape == (1, 1, 4, 4) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))


def test_build_attention_mask_causal_is_end_aligned():
    # 2 queries after 3 cached keys: query i sits at position 3 + i
    mask = build_attention_mask(2, 5, causal=True)[0, 0]
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    # a single query after a cache sees every key
    assert build_attention_mask(1, 6, causal=True)[0, 0].all()


def test_build_attention_mask_with_left_padding():
    key_padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = build_attention_mask(4, 4, causal=True, key_padding_mask=key_padding)
    assert mask.shape == (2, 1, 4, 4)
    expected_row0 = torch.tensor([
        [1, 0, 0, 0],  # padding query: only itself (never an all-False row)
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected_row0)
    assert torch.equal(mask[1, 0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert mask.any(dim=-1).all()


def test_build_attention_mask_padded_rows_never_all_false():
    torch.manual_seed(0)
    for causal in (True, False):
        key_padding = torch.zeros(3, 5, dtype=torch.long)  # even an all-padding row
        key_padding[1, 3:] = 1
        mask = build_attention_mask(5, 5, causal=causal, key_padding_mask=key_padding)
        assert mask.any(dim=-1).all()
        # hence the reference attention stays finite
        q = k = v = torch.randn(3, 2, 5, 4)
        assert torch.isfinite(attention_reference(q, k, v, attn_mask=mask)).all()


def test_build_attention_mask_bidirectional_padding():
    key_padding = torch.tensor([[1, 1, 0]])
    mask = build_attention_mask(3, 3, causal=False, key_padding_mask=key_padding)[0, 0]
    # padding queries attend to the real keys, as in Hugging Face encoders
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_build_attention_mask_padding_with_cache_offset():
    # 1 new query after 3 cached keys, the first cached key is padding
    key_padding = torch.tensor([[0, 1, 1, 1]])
    mask = build_attention_mask(1, 4, causal=True, key_padding_mask=key_padding)
    assert torch.equal(mask[0, 0], torch.tensor([[0, 1, 1, 1]], dtype=torch.bool))


# ----------------------------------------------------------------------------- KV cache


def _incremental_vs_full(rotary: bool, use_sdpa: bool, chunks: list[int]):
    torch.manual_seed(0)
    rot = RotaryEmbedding(HEAD_DIM, max_len=32) if rotary else None
    mha = MultiHeadAttention(DIM, HEADS, rotary=rot).eval()
    mha.use_sdpa = use_sdpa
    B, T = 2, sum(chunks)
    x = torch.randn(B, T, DIM)
    with torch.no_grad():
        full = mha(x, causal=True, positions=torch.arange(T))
        cache = KVCache(1, B, HEADS, max_len=16, head_dim=HEAD_DIM)
        outs, start = [], 0
        for n in chunks:
            outs.append(mha(x[:, start:start + n], causal=True, kv_cache=cache, layer_idx=0,
                            positions=torch.arange(start, start + n)))
            cache.advance(n)
            start += n
    assert cache.length == T
    return full, torch.cat(outs, dim=1)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_token_by_token_matches_full_pass(rotary, use_sdpa):
    full, incremental = _incremental_vs_full(rotary, use_sdpa, [1] * 9)
    assert (full - incremental).abs().max() <= TOL


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_chunked_prefill_matches_full_pass(rotary, use_sdpa):
    # prefill 3, then a chunk of 4 against the 3 cached tokens, then single tokens, then a chunk of 2
    full, incremental = _incremental_vs_full(rotary, use_sdpa, [3, 4, 1, 1, 2])
    assert (full - incremental).abs().max() <= TOL


def test_kv_cache_stores_in_place_and_rejects_overflow():
    cache = KVCache(2, 1, HEADS, max_len=4, head_dim=HEAD_DIM)
    ptr = cache.keys[1].data_ptr()
    layer0_before = cache.keys[0].clone()
    k, v = torch.randn(1, HEADS, 3, HEAD_DIM), torch.randn(1, HEADS, 3, HEAD_DIM)
    keys, values = cache.update(1, k, v)
    assert keys.shape == (1, HEADS, 3, HEAD_DIM)
    assert torch.equal(keys, k) and torch.equal(values, v)
    assert cache.keys[1].data_ptr() == ptr  # written into the preallocated buffer
    assert cache.length == 0  # only `advance` moves the length
    cache.advance(3)
    k2 = torch.randn(1, HEADS, 1, HEAD_DIM)
    keys, _ = cache.update(1, k2, k2)
    assert keys.shape[2] == 4 and torch.equal(keys[:, :, :3], k) and torch.equal(keys[:, :, 3:], k2)
    # bitwise: the buffers are uninitialised and may hold NaN patterns
    assert torch.equal(cache.keys[0].view(torch.int32), layer0_before.view(torch.int32))  # other layers untouched
    cache.advance(1)
    with pytest.raises(DlforgeError, match="full"):
        cache.update(0, k2, k2)
