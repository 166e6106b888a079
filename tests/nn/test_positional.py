"""Tests for dlforge.nn.positional: sinusoidal table, learned embeddings, rotary embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.nn import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding, sinusoidal_table


def test_sinusoidal_table_hand_computed_entries():
    d = 16
    table = sinusoidal_table(50, d)
    assert table.shape == (50, d)
    # PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))
    assert table[7, 6].item() == pytest.approx(math.sin(7 / 10000 ** (6 / 16)), abs=1e-6)
    assert table[7, 7].item() == pytest.approx(math.cos(7 / 10000 ** (6 / 16)), abs=1e-6)
    assert table[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert table[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert table[42, 14].item() == pytest.approx(math.sin(42 / 10000 ** (14 / 16)), abs=1e-5)
    assert table[42, 15].item() == pytest.approx(math.cos(42 / 10000 ** (14 / 16)), abs=1e-5)
    # position 0: sin 0 = 0 in even columns, cos 0 = 1 in odd ones
    assert torch.equal(table[0, 0::2], torch.zeros(d // 2))
    assert torch.equal(table[0, 1::2], torch.ones(d // 2))


def test_sinusoidal_table_matches_formula_everywhere():
    L, d = 20, 10
    table = sinusoidal_table(L, d)
    expected = torch.empty(L, d)
    for pos in range(L):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            expected[pos, 2 * i], expected[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    torch.testing.assert_close(table, expected, atol=1e-5, rtol=0)


def test_sinusoidal_table_custom_base_and_odd_dim():
    table = sinusoidal_table(5, 7, base=100.0)
    assert table.shape == (5, 7)
    assert table[3, 4].item() == pytest.approx(math.sin(3 / 100 ** (4 / 7)), abs=1e-6)
    assert table[3, 5].item() == pytest.approx(math.cos(3 / 100 ** (4 / 7)), abs=1e-6)
    assert table[3, 6].item() == pytest.approx(math.sin(3 / 100 ** (6 / 7)), abs=1e-6)


def test_sinusoidal_module_indexes_table_and_is_not_persistent():
    enc = SinusoidalPositionalEncoding(30, 12)
    positions = torch.tensor([[0, 5, 29], [3, 3, 1]])
    out = enc(positions)
    assert out.shape == (2, 3, 12)
    assert torch.equal(out[0, 1], sinusoidal_table(30, 12)[5])
    assert "table" not in enc.state_dict()
    assert list(enc.parameters()) == []


def test_learned_embedding_shape_and_trainable():
    emb = LearnedPositionalEmbedding(10, 8)
    assert emb(torch.arange(5)).shape == (5, 8)
    assert emb(torch.zeros(3, 4, dtype=torch.long)).shape == (3, 4, 8)
    assert emb.weight.shape == (10, 8) and emb.weight.requires_grad
    assert "weight" in emb.state_dict()
    with pytest.raises(IndexError):
        emb(torch.tensor([10]))


def _rotate(rot: RotaryEmbedding, x: torch.Tensor, pos: int) -> torch.Tensor:
    """Rotate a (1, 1, 1, D) vector as if it sat at position `pos`."""
    q, _ = rot(x, x, torch.tensor([pos]))
    return q


def test_rotary_dot_product_depends_only_on_relative_position():
    torch.manual_seed(0)
    D = 16
    rot = RotaryEmbedding(D, max_len=200)
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)
    for d in (0, 3, 17):
        dots = [(_rotate(rot, q, p) * _rotate(rot, k, p + d)).sum().item() for p in (2, 41, 150)]
        assert dots[0] == pytest.approx(dots[1], abs=1e-4)
        assert dots[0] == pytest.approx(dots[2], abs=1e-4)
    # and the dot product does change with the relative distance
    d0 = (_rotate(rot, q, 5) * _rotate(rot, k, 5)).sum().item()
    d7 = (_rotate(rot, q, 5) * _rotate(rot, k, 12)).sum().item()
    assert abs(d0 - d7) > 1e-2


def test_rotary_relative_property_holds_within_one_call():
    torch.manual_seed(0)
    D, T = 8, 12
    rot = RotaryEmbedding(D, max_len=64)
    q, k = torch.randn(1, 2, T, D), torch.randn(1, 2, T, D)
    q = q[:, :, :1].expand(1, 2, T, D)  # the same query/key vector at every position
    k = k[:, :, :1].expand(1, 2, T, D)
    qr, kr = rot(q, k, torch.arange(T))
    scores = qr @ kr.transpose(-2, -1)  # (1, 2, T, T)
    # scores[i, j] depends only on j - i: every diagonal is constant
    for offset in range(-T + 1, T):
        diag = torch.diagonal(scores, offset=offset, dim1=-2, dim2=-1)
        assert (diag - diag[..., :1]).abs().max() <= 1e-4


def test_rotary_preserves_norms_and_is_identity_at_zero():
    torch.manual_seed(0)
    D = 12
    rot = RotaryEmbedding(D, max_len=100)
    q, k = torch.randn(2, 3, 6, D), torch.randn(2, 3, 6, D)
    positions = torch.tensor([0, 1, 7, 30, 64, 99])
    qr, kr = rot(q, k, positions)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kr.norm(dim=-1), k.norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert torch.equal(qr[:, :, 0], q[:, :, 0])
    assert (qr[:, :, 1:] - q[:, :, 1:]).abs().max() > 1e-2  # other positions do rotate


def test_rotary_matches_rotate_half_formula():
    torch.manual_seed(0)
    D, base, pos = 8, 10000.0, 13
    rot = RotaryEmbedding(D, max_len=20, base=base)
    x = torch.randn(1, 1, 1, D)
    out, _ = rot(x, x, torch.tensor([pos]))
    half = D // 2
    for i in range(half):
        theta = pos * base ** (-2 * i / D)
        a, b = x[0, 0, 0, i].item(), x[0, 0, 0, i + half].item()
        assert out[0, 0, 0, i].item() == pytest.approx(a * math.cos(theta) - b * math.sin(theta), abs=1e-5)
        assert out[0, 0, 0, i + half].item() == pytest.approx(b * math.cos(theta) + a * math.sin(theta), abs=1e-5)


def test_rotary_per_row_positions():
    torch.manual_seed(0)
    rot = RotaryEmbedding(8, max_len=20)
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    qr, kr = rot(q, k, positions)
    q0, k0 = rot(q[:1], k[:1], torch.arange(3))
    q1, k1 = rot(q[1:], k[1:], torch.arange(5, 8))
    torch.testing.assert_close(qr, torch.cat([q0, q1]))
    torch.testing.assert_close(kr, torch.cat([k0, k1]))


def test_rotary_odd_head_dim_raises():
    with pytest.raises(DlforgeError, match="even"):
        RotaryEmbedding(7, max_len=10)
