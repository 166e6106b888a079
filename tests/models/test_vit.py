"""Tests for dlforge.models.vit: shapes, the vision-model protocol (features/head/with_head), position
interpolation, parameter names the transfer tools rely on, config validation and a short training run."""

from __future__ import annotations

import re

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models import MODEL_CLASSES
from dlforge.models.vit import VIT_PRESETS, ViT, ViTConfig
from dlforge.training.layerwise import freeze_below, layerwise_lr_scales, num_blocks
from dlforge.transfer.lora import apply_lora


def tiny_vit(seed: int = 0, perturb: bool = True, **overrides) -> ViT:
    torch.manual_seed(seed)
    cfg = dict(image_size=16, patch_size=4, channels=3, hidden_size=32, n_layer=3, n_head=4, intermediate_size=48,
               num_labels=5)
    cfg.update(overrides)
    model = ViT(ViTConfig(**cfg)).eval()
    if perturb:
        with torch.no_grad():  # LN affine and biases away from their init values
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


def images(b: int = 2, c: int = 3, h: int = 16, w: int | None = None, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, h, w or h, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_loss():
    model = tiny_vit()
    x = images()
    assert model.encode(x).shape == (2, 1 + 16, 32)
    assert model.features(x).shape == (2, 32) and model.feature_dim == 32
    out = model(x, labels=torch.tensor([0, 4]))
    assert out.logits.shape == (2, 5)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 4])))
    assert model.predict(x).shape == (2,)
    gray = tiny_vit(channels=1, image_size=12, patch_size=3, qkv_bias=False, activation="relu")
    assert gray(images(c=1, h=12)).logits.shape == (2, 5)


def test_head_of_features_is_logits_in_eval():
    model = tiny_vit(dropout=0.2, head_dropout=0.3)
    x = images(3)
    assert torch.equal(model.head(model.features(x)), model(x).logits)
    assert torch.equal(model.features(x), model.encode(x)[:, 0])
    model.train()  # dropout active: logits change from call to call
    torch.manual_seed(0)
    a = model(x).logits
    assert not torch.equal(a, model(x).logits)


def test_mean_pooling_head_reads_the_average_patch_token(tmp_path):
    model = tiny_vit(pooling="mean", pooler=True)
    x = images(3)
    hidden = model.encode(x)
    torch.testing.assert_close(model.features(x), hidden[:, 1:].mean(dim=1))
    assert not torch.allclose(model.features(x), hidden[:, 0])
    assert torch.equal(model(x).logits, model.head(model.features(x)))
    torch.testing.assert_close(model.pool(x), torch.tanh(model.pooler(hidden[:, 0])))  # HF's pooler stays on [CLS]
    with pytest.raises(DlforgeError, match="pooling must be 'cls' or 'mean'"):
        tiny_vit(pooling="max")
    from dlforge.models.converters.vit import save_hf_vit

    with pytest.raises(DlforgeError, match="pooling='mean' cannot be saved in the Hugging Face format"):
        save_hf_vit(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_with_head_replaces_the_head_and_keeps_the_backbone():
    model = tiny_vit()
    x = images()
    before = model.features(x)
    assert model.with_head(7, labels=list("abcdefg")) is model
    assert model.config.num_labels == 7 and model.config.labels == list("abcdefg")
    assert model(x).logits.shape == (2, 7)
    assert torch.equal(model.features(x), before)
    assert torch.equal(model.head.bias, torch.zeros(7))
    with pytest.raises(DlforgeError, match="label names"):
        model.with_head(3, labels=["a"])
    model.with_head(0)
    assert model.head is None and model(x).logits is None
    assert torch.equal(model(x).last_hidden_state, model.encode(x))  # a backbone returns its states
    with pytest.raises(DlforgeError, match="no classification head"):
        model(x, labels=torch.tensor([0, 1]))


def test_backbone_without_head_and_pooler():
    model = tiny_vit(num_labels=0, pooler=True)
    x = images()
    out = model(x)
    assert model.head is None and out.logits is None and torch.equal(out.pooler_output, model.pool(x))
    with pytest.raises(DlforgeError, match="no classification head"):
        model(x, labels=torch.tensor([0, 1]))
    pooled = model.pool(x)
    assert torch.allclose(pooled, torch.tanh(model.pooler(model.features(x))))
    with pytest.raises(DlforgeError, match="no pooler"):
        tiny_vit().pool(x)


def test_position_interpolation():
    model = tiny_vit()
    emb = model.embeddings
    # bicubic resampling onto the native grid gives back the learned embeddings: interpolating is a no-op there
    assert torch.allclose(emb.interpolated_positions(4, 4), emb.position_embeddings, atol=1e-6)
    assert emb.positions_for(4, 4) is emb.position_embeddings
    assert model.encode(images(h=24)).shape == (2, 1 + 36, 32)
    assert model.encode(images(h=16, w=28)).shape == (2, 1 + 4 * 7, 32)
    assert model(images(h=20)).logits.shape == (2, 5)
    # resizing for good gives what the model computed on the fly at that size
    x24 = images(h=24)
    on_the_fly = model(x24).logits
    model.embeddings.position_embeddings.requires_grad_(False)
    assert model.resize_position_embeddings(24) is model
    assert model.config.image_size == 24 and model.embeddings.position_embeddings.shape == (1, 37, 32)
    assert not model.embeddings.position_embeddings.requires_grad
    assert torch.allclose(model(x24).logits, on_the_fly, atol=1e-6)


def test_parameter_names_for_transfer_tools():
    model = tiny_vit(pooler=True)
    names = [n for n, _ in model.named_parameters()]
    assert all(re.match(r"(embeddings|layers\.\d+|norm|pooler|head)\.", n) for n in names), names
    assert {"embeddings.patch_embeddings.weight", "embeddings.cls_token", "embeddings.position_embeddings",
            "layers.0.attn.c_attn.weight", "layers.2.mlp.c_fc.weight", "head.weight"} <= set(names)
    assert num_blocks(model) == 3
    freeze_below(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if n.startswith(("layers.2.", "norm.", "pooler.", "head."))}
    scales = layerwise_lr_scales(model, 0.5)
    assert scales["embeddings.cls_token"] == 0.5 ** 4 and scales["layers.0.ln_1.weight"] == 0.5 ** 3
    assert scales["head.weight"] == 1.0


def test_lora_wraps_the_shared_block_linears():
    model = tiny_vit(qkv_bias=False)
    assert model.layers[0].attn.c_attn.bias is None and model.layers[0].attn.c_proj.bias is not None
    x = images()
    before = model(x).logits
    wrapped = apply_lora(model, r=2)
    assert len(wrapped) == 3 * 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per block
    assert torch.allclose(model(x).logits, before)  # B starts at zero
    assert {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n} == {"head.weight",
                                                                                                 "head.bias"}


def test_input_and_config_errors():
    model = tiny_vit()
    with pytest.raises(DlforgeError, match=r"\(B, 3, H, W\)"):
        model(images(c=1))
    with pytest.raises(DlforgeError, match="smaller than one"):
        model(images(h=3))
    bad = [dict(hidden_size=30), dict(patch_size=20), dict(activation="tanh"), dict(labels=["a", "b"]),
           dict(image_mean=[0.5, 0.5, 0.5]), dict(image_mean=[0.5] * 2, image_std=[0.5] * 2), dict(num_labels=-1),
           dict(dropout=1.0), dict(image_mean=[0.5] * 3, image_std=[0.5, 0.0, 0.5])]
    base = dict(image_size=16, patch_size=4, hidden_size=32, n_layer=1, n_head=4, num_labels=5)
    for overrides in bad:
        with pytest.raises(DlforgeError):
            ViTConfig(**{**base, **overrides})
    with pytest.raises(DlforgeError, match="unknown VIT config keys: colour"):
        ViTConfig.from_dict({**base, "colour": 1})


def test_presets_are_valid_configs():
    for name, preset in VIT_PRESETS.items():
        config = ViTConfig(**preset)
        assert config.image_size % config.patch_size == 0, name
    with torch.device("meta"):  # no memory, no init cost
        base = ViT(ViTConfig(**VIT_PRESETS["vit-b/16"]))
    # google/vit-base-patch16-224 (ViTForImageClassification, no pooler) has 86,567,656 parameters
    assert sum(p.numel() for p in base.parameters()) == 86_567_656
    mnist = ViT(ViTConfig(**VIT_PRESETS["mnist"]))
    assert sum(p.numel() for p in mnist.parameters()) < 1_000_000
    assert mnist(torch.zeros(2, 1, 28, 28)).logits.shape == (2, 10)


def test_learns_pattern_images():
    """Horizontal bars, vertical bars or a centred square at random places, with noise: 3 easy classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 28, 28, generator=g) * 0.3 - 1  # (96, 1, 28, 28) in [-1, 1]
    y = torch.arange(96) % 3
    for i, at in enumerate(torch.randint(6, 20, (96,), generator=g).tolist()):
        if y[i] == 0:
            x[i, 0, at:at + 4, 4:24] = 1
        elif y[i] == 1:
            x[i, 0, 4:24, at:at + 4] = 1
        else:
            x[i, 0, 9:19, 9:19] = 1
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=28, patch_size=7, channels=1, hidden_size=32, n_layer=2, n_head=2,
                          intermediate_size=64, num_labels=3))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)  # transformers need a small LR and a warmup
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    model.train()
    for step in range(150):
        rows = torch.arange(step * 32, step * 32 + 32) % 96
        loss = model(x[rows], labels=y[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
    model.eval()
    assert (model.predict(x) == y).float().mean() >= 0.85


@pytest.mark.skipif("vit" not in MODEL_CLASSES, reason="ViT is not registered in dlforge.models.MODEL_CLASSES")
def test_dlforge_format_round_trip(tmp_path):
    from dlforge.models import load_pretrained, save_pretrained

    model = tiny_vit(pooler=True, labels=list("vwxyz"), image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    save_pretrained(model, tmp_path / "vit")
    loaded, tokenizer = load_pretrained(tmp_path / "vit")
    assert tokenizer is None and isinstance(loaded, ViT) and loaded.config == model.config
    x = images()
    assert torch.equal(loaded(x).logits, model(x).logits)
