"""`nn.linear`: the fused oneDNN linear + activation (CPU inference) against F.linear and the activation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dlforge.nn import Linear
from dlforge.nn.linear import (
    ACTIVATION_FUNCTIONS,
    HAS_ONEDNN_LINEAR,
    HAS_WEIGHT_PACKING,
    PACKED_ATTRIBUTE,
    linear_activation,
    linear_plus_bias,
    onednn_fusion_applies,
    onednn_weight,
)

needs_onednn = pytest.mark.skipif(not HAS_ONEDNN_LINEAR, reason="this torch build has no oneDNN linear kernel")
needs_packing = pytest.mark.skipif(not HAS_WEIGHT_PACKING, reason="this torch build cannot prepack oneDNN weights")


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
        assert not onednn_fusion_applies(x[:1], layer)  # one fp32 row: Linear's split GEMV path
        assert onednn_fusion_applies(x[:1].bfloat16(), copy.deepcopy(layer).bfloat16())  # bf16: packed weights
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


@needs_packing
def test_bf16_layer_prepacks_its_weight_once_and_repacks_when_it_changes():
    torch.manual_seed(0)
    layer = Linear(40, 97).to(torch.bfloat16)
    x = torch.randn(5, 3, 40, dtype=torch.bfloat16)
    with torch.no_grad():
        first = layer(x)
        packed = onednn_weight(layer)
        assert packed.layout == torch._mkldnn and onednn_weight(layer) is packed  # packed once, reused
        # the same oneDNN product as on the plain weight, to the bit
        assert torch.equal(first, torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], ""))
        for one_row in (x[:1, :1], x[0, 0]):  # decoding's single row takes the packed kernel too
            assert torch.equal(layer(one_row), torch.ops.mkldnn._linear_pointwise(
                one_row, layer.weight, layer.bias, "none", [], ""))
        layer.weight.mul_(-2)  # an in-place update (an optimizer step, load_state_dict)
        assert onednn_weight(layer) is not packed
        torch.testing.assert_close(layer(x), -2 * first + 3 * layer.bias, rtol=0.02, atol=0.02)
        layer.weight.mul_(-0.5)
        layer.float()
        layer.bfloat16()  # a new weight tensor, maybe at the freed address of an earlier one
        torch.testing.assert_close(layer(x), first)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        # the fused MLP product and BART's logits bias use the same packed weight
        torch.testing.assert_close(linear_activation(x, layer, "relu"), F.relu(first))
        no_bias = Linear(40, 97, bias=False).to(torch.bfloat16)
        torch.testing.assert_close(linear_plus_bias(x, no_bias, layer.bias),
                                   F.linear(x, no_bias.weight) + layer.bias, rtol=0.02, atol=0.02)


@needs_packing
def test_packed_weight_stays_out_of_state_dict_copies_and_pickles():
    import pickle

    layer = Linear(16, 24).to(torch.bfloat16)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = layer(x)
        assert PACKED_ATTRIBUTE in layer.__dict__
        assert set(layer.state_dict()) == {"weight", "bias"}
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert PACKED_ATTRIBUTE not in clone.__dict__
            assert torch.equal(clone(x), expected)
    trained = layer.float()(x.float())  # autograd on: plain F.linear, no packing
    assert trained.requires_grad
