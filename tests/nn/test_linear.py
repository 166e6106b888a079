"""`nn.linear`: the fused oneDNN linear + activation (CPU inference) against F.linear and the activation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dlforge.nn import Linear
from dlforge.nn.linear import ACTIVATION_FUNCTIONS, HAS_ONEDNN_LINEAR, linear_activation, onednn_fusion_applies

needs_onednn = pytest.mark.skipif(not HAS_ONEDNN_LINEAR, reason="this torch build has no oneDNN linear kernel")


def exact(x, layer, activation):
    """The unfused computation in float64: the value both paths approximate."""
    bias = None if layer.bias is None else layer.bias.double()
    return ACTIVATION_FUNCTIONS[activation](F.linear(x.double(), layer.weight.double(), bias))


@needs_onednn
@pytest.mark.parametrize("activation", sorted(ACTIVATION_FUNCTIONS))
@pytest.mark.parametrize("shape", [(3, 7, 40), (5, 40), (2, 1, 3, 40)])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_path_matches_linear_then_activation(activation, shape, bias):
    torch.manual_seed(0)
    layer = Linear(40, 97, bias=bias)  # odd widths: no kernel-friendly multiples
    x = torch.randn(*shape)
    with torch.no_grad():
        assert onednn_fusion_applies(x, layer)
        fused = linear_activation(x, layer, activation)
        unfused = ACTIVATION_FUNCTIONS[activation](F.linear(x, layer.weight, layer.bias))
        assert fused.shape == unfused.shape == (*shape[:-1], 97)
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
        # bf16 weights and input: as close to the exact value as the unfused bf16 computation is
        layer16, x16 = layer.to(torch.bfloat16), x.to(torch.bfloat16)
        reference = exact(x16, layer16, activation)
        fused_error = (linear_activation(x16, layer16, activation).double() - reference).abs().max()
        unfused16 = F.linear(x16, layer16.weight, layer16.bias)
        unfused_error = (ACTIVATION_FUNCTIONS[activation](unfused16).double() - reference).abs().max()
        assert fused_error <= 2 * unfused_error + 1e-2, (fused_error, unfused_error)


def test_fusion_only_for_cpu_inference_of_plain_layers():
    layer, x = Linear(8, 16), torch.randn(4, 8)
    assert not onednn_fusion_applies(x, layer)  # autograd on: training takes F.linear and F.gelu
    with torch.no_grad():
        assert not onednn_fusion_applies(x[:1], layer)  # one row: Linear's split GEMV path
        assert not onednn_fusion_applies(x.to(torch.bfloat16), layer)  # mixed dtypes
        assert not onednn_fusion_applies(torch.randn(8, 4).t(), layer)  # non-contiguous input
        wrapped = torch.nn.Sequential(layer)
        assert not onednn_fusion_applies(x, wrapped)  # e.g. a LoRA wrapper: its own forward runs
        assert not onednn_fusion_applies(x.double(), copy.deepcopy(layer).double())
    out = linear_activation(x, layer, "gelu")
    out.sum().backward()  # the autograd path trains
    assert layer.weight.grad is not None


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_at_inference_matches_f_linear(dtype):  # one oneDNN call at inference
    torch.manual_seed(0)
    layer = Linear(40, 97).to(dtype)
    x = torch.randn(6, 9, 40, dtype=dtype)
    reference = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    with torch.no_grad():
        assert onednn_fusion_applies(x, layer)
        fused, plain = layer(x), F.linear(x, layer.weight, layer.bias)
    assert fused.shape == (6, 9, 97) and fused.dtype == dtype
    fused_error = (fused.double() - reference).abs().max()
    plain_error = (plain.double() - reference).abs().max()
    assert fused_error <= 2 * plain_error + (1e-5 if dtype == torch.float32 else 1e-2), (fused_error, plain_error)
    trained = layer.float()(x.float())  # with autograd: the ordinary F.linear, which trains
    assert trained.requires_grad


def test_autocast_runs_the_mlp_product_in_bf16():
    """Under CPU autocast an fp32 layer must multiply in bf16 like F.linear does (the fused oneDNN kernel would
    keep fp32, about 4x slower): the result comes back in bf16 and matches autocast's F.linear + GELU."""
    torch.manual_seed(0)
    layer = Linear(64, 256)
    x = torch.randn(4, 10, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_activation(x, layer, "gelu")
        reference = F.gelu(F.linear(x, layer.weight, layer.bias))
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, reference)
