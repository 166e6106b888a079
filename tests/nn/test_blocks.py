"""Tests for dlforge.nn.blocks: norms, the MLP activations and pre-/post-LN transformer blocks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.nn import MLP, RMSNorm, TransformerBlock, make_norm

DIM, HEADS = 16, 4
TOL = 1e-5


def _randomize_norms(module: nn.Module) -> None:
    """Give every norm non-trivial weights (and biases) so that mixing them up would show."""
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, RMSNorm)):
            with torch.no_grad():
                m.weight.normal_(1.0, 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.5)


# ----------------------------------------------------------------------------- norms


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(DIM, eps=0.1)  # a large eps so that a wrong eps placement would show
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, DIM) * 0.3
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 0.1) * norm.weight
    assert (norm(x) - expected).abs().max() <= TOL


def test_make_norm_kinds():
    ln = make_norm("layernorm", DIM, eps=1e-3)
    assert isinstance(ln, nn.LayerNorm) and ln.eps == 1e-3 and ln.bias is not None
    assert make_norm("layernorm", DIM, bias=False).bias is None
    rms = make_norm("rmsnorm", DIM, eps=1e-4)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-4
    x = torch.randn(2, DIM)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-4)
    assert (rms(x) - expected).abs().max() <= TOL


def test_unknown_norm_raises():
    with pytest.raises(DlforgeError, match="unknown norm"):
        make_norm("batchnorm", DIM)
    with pytest.raises(DlforgeError, match="unknown norm"):
        TransformerBlock(DIM, HEADS, norm="groupnorm")


# ----------------------------------------------------------------------------- MLP


def _gelu_erf(h):
    return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))


def _gelu_tanh(h):
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h.pow(3))))


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "relu", "swiglu"])
def test_mlp_activation_matches_manual_formula(activation):
    torch.manual_seed(0)
    hidden = 24
    mlp = MLP(DIM, hidden, activation).eval()
    x = torch.randn(2, 5, DIM) * 2
    W1, b1, W2, b2 = mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias
    h = x @ W1.T + b1
    if activation == "gelu":
        a = _gelu_erf(h)
    elif activation == "gelu_new":
        a = _gelu_tanh(h)
    elif activation == "relu":
        a = torch.clamp(h, min=0)
    else:
        assert W1.shape == (2 * hidden, DIM)  # gate and up fused
        gate, up = h[..., :hidden], h[..., hidden:]
        a = gate * torch.sigmoid(gate) * up
    expected = a @ W2.T + b2
    assert (mlp(x) - expected).abs().max() <= TOL


def test_gelu_variants_differ():
    """gelu and gelu_new are different functions; the MLP must not treat them as the same."""
    torch.manual_seed(0)
    a, b = MLP(DIM, 32, "gelu"), MLP(DIM, 32, "gelu_new")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, DIM) * 3
    assert (a(x) - b(x)).abs().max() > 1e-6


def test_unknown_activation_raises():
    with pytest.raises(DlforgeError, match="unknown activation"):
        MLP(DIM, 32, "tanh")
    with pytest.raises(DlforgeError, match="unknown activation"):
        TransformerBlock(DIM, HEADS, activation="sigmoid")


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_pre_ln_block_formula(norm):
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, mlp_hidden=40, norm=norm, pre_ln=True).eval()
    _randomize_norms(block)
    x = torch.randn(2, 6, DIM)
    with torch.no_grad():
        h = x + block.attn(block.ln_1(x), causal=True)
        expected = h + block.mlp(block.ln_2(h))
        out = block(x, causal=True)
    assert block.mlp.c_fc.out_features == 40
    assert (out - expected).abs().max() <= TOL


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_post_ln_block_formula(norm):
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, norm=norm, pre_ln=False).eval()
    _randomize_norms(block)
    x = torch.randn(2, 6, DIM)
    with torch.no_grad():
        h = block.ln_1(x + block.attn(x, causal=True))
        expected = block.ln_2(h + block.mlp(h))
        out = block(x, causal=True)
    assert (out - expected).abs().max() <= TOL


def test_pre_and_post_ln_differ_with_same_weights():
    torch.manual_seed(0)
    pre = TransformerBlock(DIM, HEADS, pre_ln=True).eval()
    _randomize_norms(pre)
    post = TransformerBlock(DIM, HEADS, pre_ln=False).eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 4, DIM)
    with torch.no_grad():
        assert (pre(x) - post(x)).abs().max() > 1e-3
        # post-LN output is normalised (LayerNorm with the block's ln_2 affine undone)
        y = post(x)
        z = (y - post.ln_2.bias) / post.ln_2.weight
        torch.testing.assert_close(z.mean(-1), torch.zeros(1, 4), atol=1e-4, rtol=0)


def test_pre_ln_block_with_cross_attention_formula():
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, cross_attention=True, context_dim=10, pre_ln=True).eval()
    _randomize_norms(block)
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, 10)
    ctx_mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    ctx_mask[0, ..., 4:] = False
    with torch.no_grad():
        h = x + block.attn(block.ln_1(x), causal=True)
        h = h + block.cross_attn(block.ln_cross(h), context=ctx, attn_mask=ctx_mask)
        expected = h + block.mlp(block.ln_2(h))
        out = block(x, causal=True, context=ctx, context_mask=ctx_mask)
        without_cross = x + block.attn(block.ln_1(x), causal=True)
        without_cross = without_cross + block.mlp(block.ln_2(without_cross))
    assert (out - expected).abs().max() <= TOL
    assert (out - without_cross).abs().max() > 1e-3  # the cross-attention sublayer is used


def test_post_ln_block_with_cross_attention_formula():
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, cross_attention=True, pre_ln=False).eval()
    _randomize_norms(block)
    x, ctx = torch.randn(1, 3, DIM), torch.randn(1, 4, DIM)
    with torch.no_grad():
        h = block.ln_1(x + block.attn(x))
        h = block.ln_cross(h + block.cross_attn(h, context=ctx))
        expected = block.ln_2(h + block.mlp(h))
        out = block(x, context=ctx)
    assert (out - expected).abs().max() <= TOL


def test_block_without_cross_attention_has_no_cross_modules():
    block = TransformerBlock(DIM, HEADS)
    assert block.cross_attn is None and not hasattr(block, "ln_cross")
    assert block.mlp.c_fc.out_features == 4 * DIM  # default hidden width
    no_bias = TransformerBlock(DIM, HEADS, bias=False)
    assert all(not n.endswith("bias") for n, _ in no_bias.named_parameters())


def test_block_dropout_active_only_in_training():
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, dropout=0.5)
    x = torch.randn(2, 5, DIM)
    block.train()
    assert (block(x) - block(x)).abs().max() > 1e-4
    block.eval()
    assert torch.equal(block(x), block(x))
