"""Tests for dlforge.models.gpt, and parity with Hugging Face GPT-2 (transformers as a reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.models import GPT, MODEL_CLASSES, GPTConfig


def tiny_config(**overrides) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16)
    base.update(overrides)
    return GPTConfig(**base)


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


# ----------------------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(DlforgeError, match="positional"):
        GPTConfig(positional="alibi")
    with pytest.raises(DlforgeError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(DlforgeError, match="unknown GPT config keys: bogus"):
        GPTConfig.from_dict({"n_layer": 2, "bogus": 1})
    assert GPTConfig.from_dict({"n_layer": 3, "positional": "rotary"}) == GPTConfig(n_layer=3, positional="rotary")
    assert MODEL_CLASSES["gpt"] is GPT and GPT.config_class is GPTConfig


# ----------------------------------------------------------------------------- forward / loss


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary", "none"])
def test_forward_shapes(positional):
    model = tiny_gpt(positional=positional)
    ids = torch.randint(0, 37, (3, 10))
    out = model(ids)
    assert out.logits.shape == (3, 10, 37) and out.loss is None
    last = model(ids, last_only=True)
    assert last.logits.shape == (3, 1, 37)
    torch.testing.assert_close(last.logits, out.logits[:, -1:])
    # positional modules present exactly as configured
    assert ("wpe" in model.transformer) == (positional in ("learned", "sinusoidal"))
    assert (model.transformer.h[0].attn.rotary is not None) == (positional == "rotary")


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_forward_is_causal(positional):
    model = tiny_gpt(positional=positional)
    ids = torch.randint(0, 37, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 37
    a, b = model(ids).logits, model(changed).logits
    assert (a[:, :8] - b[:, :8]).abs().max() <= 1e-6
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-4


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_positions_matter(positional):
    """The same token at two positions gets different logits unless the model is position-blind."""
    model = tiny_gpt(positional=positional)
    ids = torch.tensor([[5, 9, 5, 9, 5, 9]])
    logits = model(ids).logits
    assert (logits[0, 1] - logits[0, 3]).abs().max() > 1e-5


def test_loss_equals_cross_entropy():
    model = tiny_gpt()
    ids = torch.randint(0, 37, (2, 9))
    targets = torch.randint(0, 37, (2, 9))
    out = model(ids, targets=targets)
    expected = F.cross_entropy(out.logits.reshape(-1, 37), targets.reshape(-1))
    assert out.logits.shape == (2, 9, 37)  # all positions even with last_only defaulting False
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # near log(V) for a fresh model (uniform-ish predictions)
    assert abs(out.loss.item() - math.log(37)) < 0.5
    # last_only is ignored when targets are given
    out2 = model(ids, targets=targets, last_only=True)
    assert out2.logits.shape == (2, 9, 37) and out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-6)


def test_loss_ignores_minus_100():
    model = tiny_gpt()
    ids = torch.randint(0, 37, (2, 8))
    targets = torch.randint(0, 37, (2, 8))
    targets[0, :3] = -100
    targets[1, 5:] = -100
    out = model(ids, targets=targets)
    logp = out.logits.log_softmax(-1)
    keep = targets != -100
    manual = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    assert out.loss.item() == pytest.approx(manual.item(), abs=1e-6)
    # and it differs from the loss that would count the ignored positions as class 0
    zeros = targets.clamp(min=0)
    assert abs(model(ids, targets=zeros).loss.item() - out.loss.item()) > 1e-4


def test_loss_backward_reaches_every_parameter():
    model = tiny_gpt().train()
    ids = torch.randint(0, 37, (2, 8))
    model(ids, targets=torch.randint(0, 37, (2, 8))).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_sequence_longer_than_context_raises():
    model = tiny_gpt()
    with pytest.raises(DlforgeError, match="longer than the model.s context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly block_size is fine


def test_all_ones_attention_mask_equals_no_mask():
    model = tiny_gpt()
    ids = torch.randint(0, 37, (2, 7))
    torch.testing.assert_close(model(ids, attention_mask=torch.ones(2, 7)).logits, model(ids).logits)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_left_padding_with_positions_matches_unpadded(positional):
    model = tiny_gpt(positional=positional)
    ids = torch.randint(1, 37, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=mask, position_ids=positions).logits
    assert (out[:, 3:] - model(ids).logits).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- weights


def test_tied_embeddings_share_storage():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        model.transformer.wte.weight[3, 0] = 123.0
    assert model.lm_head.weight[3, 0].item() == 123.0
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # counted once


def test_untied_embeddings_are_separate():
    model = tiny_gpt(tie_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    tied = tiny_gpt()
    assert model.num_parameters() - tied.num_parameters() == 37 * 16


def test_num_parameters_exclude_embeddings():
    model = tiny_gpt()
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == total
    assert model.num_parameters(exclude_embeddings=True) == total - 16 * 16  # minus wpe (block 16 x dim 16)
    rotary = tiny_gpt(positional="rotary")
    assert rotary.num_parameters(exclude_embeddings=True) == rotary.num_parameters()


def test_init_std():
    torch.manual_seed(0)
    n_layer = 6
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=n_layer, n_head=4, n_embd=64))
    c_proj = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
    assert c_proj.numel() == n_layer * (64 * 64 + 256 * 64)
    expected = 0.02 / math.sqrt(2 * n_layer)
    assert c_proj.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(c_proj.mean().item()) < expected * 0.05
    c_attn = torch.cat([b.attn.c_attn.weight.flatten() for b in model.transformer.h])
    assert c_attn.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith(".bias") and "ln" not in name:
            assert torch.count_nonzero(p) == 0, name
    ln = model.transformer.h[0].ln_1
    assert torch.equal(ln.weight, torch.ones(64)) and torch.equal(ln.bias, torch.zeros(64))


def test_new_kv_cache_shape():
    model = tiny_gpt()
    cache = model.new_kv_cache(3)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (3, 2, 16, 8) and cache.length == 0
    assert model.new_kv_cache(1, max_len=5).keys[1].shape == (1, 2, 5, 8)


def test_cached_forward_matches_full_forward():
    model = tiny_gpt(positional="rotary")
    ids = torch.randint(0, 37, (2, 10))
    full = model(ids).logits
    cache = model.new_kv_cache(2)
    parts = [model(ids[:, :4], kv_cache=cache).logits]
    parts += [model(ids[:, t:t + 1], kv_cache=cache).logits for t in range(4, 10)]
    assert cache.length == 10
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5
    with pytest.raises(DlforgeError, match="longer than the model.s context"):
        model(ids[:, :7], kv_cache=cache)  # 10 cached + 7 > 16


# ----------------------------------------------------------------------------- Hugging Face GPT-2 parity

HF_KW = dict(n_embd=48, n_layer=3, n_head=4, vocab_size=101, n_positions=64, layer_norm_epsilon=1e-4,
             n_inner=100, bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=0.2)


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_KW)).eval()
    return model


def _prompt():
    return torch.tensor([[3, 14, 15, 92, 65, 35], [8, 97, 93, 2, 38, 46]])


def _hf_greedy(hf, ids, n=20):
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)
    return out


def _check_parity(hf, model):
    from dlforge.text.generation import generate

    assert isinstance(model, GPT)
    c = model.config
    assert (c.n_embd, c.n_layer, c.n_head, c.vocab_size, c.block_size) == (48, 3, 4, 101, 64)
    assert c.norm_eps == 1e-4 and int(c.mlp_ratio * c.n_embd) == 100 and c.activation == "gelu_new"
    ids = _prompt()
    with torch.no_grad():
        expected = hf(ids).logits
    got = model(ids).logits
    assert (got - expected).abs().max() <= 1e-4
    hf_tokens = _hf_greedy(hf, ids)
    assert hf_tokens.shape == (2, 26)
    ours = generate(model, ids, max_new_tokens=20, temperature=0)
    assert torch.equal(ours, hf_tokens)
    ours_uncached = generate(model, ids, max_new_tokens=20, temperature=0, use_cache=False)
    assert torch.equal(ours_uncached, hf_tokens)


def test_hf_parity_safetensors(hf_model, tmp_path):
    from dlforge.models import load_pretrained

    hf_model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    model, tokenizer = load_pretrained(tmp_path / "hf")
    assert tokenizer is None and not model.training
    assert model.lm_head.weight is model.transformer.wte.weight
    _check_parity(hf_model, model)


def test_hf_parity_left_padded_batch(hf_model, tmp_path):
    from dlforge.models import load_pretrained
    from dlforge.text.generation import generate

    hf_model.save_pretrained(tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf")
    ids = torch.tensor([[0, 0, 0, 3, 14, 15], [8, 97, 93, 2, 38, 46]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = hf_model.generate(ids, attention_mask=mask, max_new_tokens=15, min_new_tokens=15,
                                     do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=15, temperature=0), expected)


def test_hf_parity_pytorch_model_bin(hf_model, tmp_path):
    from dlforge.models import load_pretrained

    d = tmp_path / "hf_bin"
    hf_model.config.save_pretrained(d)
    state = dict(hf_model.state_dict())
    # older checkpoints carry attention-mask buffers; they must be skipped
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, d / "pytorch_model.bin")
    assert not (d / "model.safetensors").exists()
    model, _ = load_pretrained(d)
    _check_parity(hf_model, model)


def test_hf_checkpoint_saved_from_base_model_without_prefix(hf_model, tmp_path):
    """A GPT2Model checkpoint (keys without 'transformer.', no lm_head) loads with tied embeddings."""
    from safetensors.torch import save_file

    from dlforge.models import load_pretrained

    d = tmp_path / "hf_base"
    hf_model.config.save_pretrained(d)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf_model.state_dict().items()
             if k.startswith("transformer.")}
    assert "wte.weight" in state and not any(k.startswith("lm_head") for k in state)
    save_file(state, str(d / "model.safetensors"))
    model, _ = load_pretrained(d)
    with torch.no_grad():
        expected = hf_model(_prompt()).logits
    assert (model(_prompt()).logits - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu"])
def test_save_hf_gpt2_round_trip(tmp_path, tie, activation):
    transformers = pytest.importorskip("transformers")
    from dlforge.models.converters import save_hf_gpt2

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=53, block_size=24, n_layer=2, n_head=2, n_embd=20, mlp_ratio=3.0,
                          norm_eps=1e-3, activation=activation, tie_embeddings=tie)).eval()
    with torch.no_grad():  # make every parameter non-trivial (LN affine, biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_hf_gpt2(model, tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert hf.config.n_inner == 60 and hf.config.tie_word_embeddings == tie
    assert hf.config.layer_norm_epsilon == 1e-3
    ids = torch.randint(0, 53, (2, 24))
    with torch.no_grad():
        expected = model(ids).logits
        got = hf(ids).logits
    assert (got - expected).abs().max() <= 1e-4
    if not tie:
        assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
        assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)


def test_save_hf_gpt2_then_load_pretrained_round_trip(tmp_path):
    from dlforge.models import load_pretrained
    from dlforge.models.converters import save_hf_gpt2

    model = tiny_gpt(activation="gelu_new")
    save_hf_gpt2(model, tmp_path / "hf")
    loaded, _ = load_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 37, (2, 16))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("overrides", [dict(positional="rotary"), dict(norm="rmsnorm"), dict(bias=False),
                                       dict(activation="swiglu"), dict(positional="sinusoidal")])
def test_save_hf_gpt2_rejects_non_gpt2_models(tmp_path, overrides):
    from dlforge.models.converters import save_hf_gpt2

    with pytest.raises(DlforgeError, match="GPT-2"):
        save_hf_gpt2(tiny_gpt(**overrides), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag,value", [("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
                                        ("scale_attn_weights", False), ("activation_function", "silu")])
def test_unsupported_hf_gpt2_options_raise(tmp_path, flag, value):
    import json

    from dlforge.models import load_pretrained
    from dlforge.models.converters import save_hf_gpt2

    save_hf_gpt2(tiny_gpt(), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg[flag] = value
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DlforgeError, match=flag if flag != "activation_function" else "silu"):
        load_pretrained(tmp_path / "hf")


def test_save_hf_gpt2_special_token_ids_inside_vocab(tmp_path):
    import json

    from dlforge.models.converters import save_hf_gpt2

    save_hf_gpt2(tiny_gpt(), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id"):
        assert cfg.get(key) is None or 0 <= cfg[key] < cfg["vocab_size"], (key, cfg.get(key))


def test_hf_gpt2_with_n_inner_not_exactly_representable(tmp_path):
    transformers = pytest.importorskip("transformers")
    from dlforge.models import load_pretrained

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=28, n_layer=1, n_head=4, vocab_size=50, n_positions=16, n_inner=61,
                                  bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-4
