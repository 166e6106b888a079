"""Tests for dlforge.models.resnet: the ResNet family (shapes, published parameter counts, the vision protocol,
frozen BatchNorm staying in eval mode, config errors)."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.models.resnet import RESNET_PRESETS, ResNet, ResNetConfig
from dlforge.transfer import freeze_below, layerwise_lr_scales, num_blocks


def tiny(seed: int = 0, **overrides) -> ResNet:
    base = dict(block="basic", depths=[1, 2], widths=[4, 8], stem="small", image_size=28, channels=1,
                num_labels=3)
    base.update(overrides)
    torch.manual_seed(seed)
    return ResNet(ResNetConfig(**base))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_class_attributes_and_config_errors():
    assert ResNet.kind == "resnet" and ResNet.config_class is ResNetConfig and ResNet.log_names == ()
    for bad, match in [(dict(block="wide"), "block"), (dict(stem="deep"), "stem"),
                       (dict(depths=[2, 2], widths=[8]), "one entry per stage"),
                       (dict(depths=[], widths=[]), "one entry per stage"), (dict(depths=[0]), "depths"),
                       (dict(channels=0), "channels"), (dict(stem_width=0), "stem_width"),
                       (dict(num_labels=-1), "num_labels"), (dict(num_labels=2, labels=["a"]), "label names"),
                       (dict(image_mean=[0.5, 0.5, 0.5]), "both"), (dict(dropout=1.0), "dropout"),
                       (dict(image_mean=[0.5, 0.5], image_std=[0.5, 0.5]), "image_mean has 2 values"),
                       (dict(image_mean=[0.5], image_std=[0.0]), "image_std")]:
        kw = {"depths": [1], "widths": [4], **bad}
        with pytest.raises(DlforgeError, match=match):
            ResNetConfig(**kw)
    with pytest.raises(DlforgeError, match="unknown RESNET config keys: bogus"):
        ResNetConfig.from_dict({"bogus": 1})
    with pytest.raises(DlforgeError, match="unknown ResNet preset 'resnet9'"):
        ResNetConfig.preset("resnet9")
    config = ResNetConfig.preset("resnet50", num_labels=5)
    assert ResNetConfig.from_dict(asdict(config)) == config and config.hidden_size == 2048
    assert RESNET_PRESETS["resnet50"]["widths"] == [64, 128, 256, 512]  # presets are not changed by configs


@pytest.mark.parametrize("name,expected", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                           ("resnet50", 25_557_032)])
def test_preset_parameter_counts_match_torchvision(name, expected):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = ResNet(ResNetConfig.preset(name, num_labels=1000))
    assert n_params(model) == expected
    assert num_blocks(model) == sum(RESNET_PRESETS[name]["depths"])


def test_mnist_preset_is_small():
    model = ResNet(ResNetConfig.preset("mnist")).eval()
    assert 100_000 < n_params(model) < 500_000
    assert model(torch.zeros(2, 1, 28, 28)).logits.shape == (2, 10)
    assert model.config.labels == [str(i) for i in range(10)]


def side_after(size: int, halvings: int) -> int:
    for _ in range(halvings):
        size = math.ceil(size / 2)
    return size


@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("size", [28, 32, 64, 224])
def test_shapes(stem, block, size):
    model = tiny(block=block, stem=stem, depths=[1, 1, 1], widths=[2, 3, 4], channels=3, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    hidden = 4 * (4 if block == "bottleneck" else 1)
    side = side_after(size, (2 if stem == "imagenet" else 0) + 2)
    assert model.feature_map(x).shape == (2, hidden, side, side)
    assert model.features(x).shape == (2, hidden) and model.feature_dim == hidden
    assert model(x).logits.shape == (2, 3)


def test_protocol_head_reads_features_and_loss():
    model = tiny(dropout=0.5).eval()
    x, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 2, 1, 2])
    out = model(x, labels)
    assert torch.equal(model.head(model.features(x)), out.logits)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == model.config.hidden_size == 8
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert model(x).loss is None
    model.train()
    assert not torch.equal(model(x).logits, model(x).logits)  # the dropout before the head is active
    with pytest.raises(DlforgeError, match=r"\(B, 1, H, W\)"):
        model(torch.zeros(2, 3, 28, 28))


def test_with_head_and_no_head():
    model = tiny()
    assert model.with_head(5, labels=list("abcde")) is model
    assert model.head.out_features == 5 and model.config.num_labels == 5 and model.config.labels == list("abcde")
    model.with_head(0)
    assert model.head is None and model.config.num_labels == 0
    assert model(torch.zeros(1, 1, 28, 28)).logits is None
    with pytest.raises(DlforgeError, match="no classification head"):
        model(torch.zeros(1, 1, 28, 28), torch.tensor([0]))
    with pytest.raises(DlforgeError, match="label names"):
        model.with_head(2, labels=["x"])
    assert tiny(num_labels=0).head is None


def test_names_follow_the_protocol():
    model = tiny(depths=[2, 3], zero_init_residual=True)
    tops = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert tops == {"embeddings", "layers", "head"}
    assert len(model.layers) == num_blocks(model) == 5
    assert "layers.2.shortcut.0.weight" in model.state_dict()  # first block of stage 2 projects (4 -> 8, /2)
    assert "layers.1.shortcut.0.weight" not in model.state_dict()  # same shape: identity
    scales = layerwise_lr_scales(model, 0.5)
    assert scales["embeddings.conv.weight"] == 0.5 ** 6 and scales["head.weight"] == 1.0


def test_init():
    model = tiny(depths=[1, 1], widths=[16, 32], zero_init_residual=True)
    conv = model.layers[1].conv2.weight  # fan_out = 32·9
    assert abs(conv.std().item() - math.sqrt(2 / (32 * 9))) < 0.02
    for block in model.layers:
        assert torch.equal(block.last_bn.weight, torch.zeros_like(block.last_bn.weight))
        assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    assert not tiny().layers[0].bn2.weight.eq(0).any()
    # with zero_init_residual an identity block passes relu(x) through unchanged
    x = torch.randn(2, 4, 7, 7)
    block = tiny(depths=[2], widths=[4], zero_init_residual=True).layers[1].eval()
    torch.testing.assert_close(block(x), F.relu(x))


def batch_norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_batch_norm_stays_in_eval_mode():
    model = tiny(depths=[1, 1, 1], widths=[4, 8, 8])
    freeze_below(model, 1)  # train the top block and the head
    model.train()
    frozen = batch_norms(model.embeddings) + batch_norms(model.layers[0]) + batch_norms(model.layers[1])
    top = batch_norms(model.layers[2])
    assert all(not bn.training for bn in frozen) and all(bn.training for bn in top)
    assert model.training and model.layers[0].training  # only the frozen BN layers are switched
    before = {id(bn): bn.running_mean.clone() for bn in frozen + top}
    model(torch.randn(4, 1, 28, 28) * 3 + 1, torch.tensor([0, 1, 2, 0])).loss.backward()
    assert all(torch.equal(bn.running_mean, before[id(bn)]) for bn in frozen)
    assert all(not torch.equal(bn.running_mean, before[id(bn)]) for bn in top)
    # feature extraction (only the head trains): every BN keeps its statistics; unfreezing restores training
    freeze_below(model, 0)
    assert not any(bn.training for bn in batch_norms(model.train()))
    for p in model.parameters():
        p.requires_grad = True
    assert all(bn.training for bn in batch_norms(model.train()))
    assert not any(bn.training for bn in batch_norms(model.eval()))


def test_trains():
    """Bright square top-left vs bottom-right: a tiny bottleneck net separates them within 30 steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 2
    x = torch.randn(32, 1, 16, 16, generator=g) * 0.3
    for i in range(32):
        r = 2 if labels[i] == 0 else 10
        x[i, 0, r:r + 4, r:r + 4] += 2.0
    model = tiny(block="bottleneck", num_labels=2, image_size=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(x, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(x).logits.argmax(-1) == labels).float().mean() == 1.0


def test_cpu_inference_runs_channels_last_with_the_same_result():
    model = tiny(3, stem="imagenet", block="bottleneck", channels=3).eval()
    seen = []
    model.embeddings.conv.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = model.features(x)
    reference = model.features(x)  # with autograd on: the plain layout, as in training
    assert seen == [True, False]
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-5, atol=1e-5)
    assert model.embeddings.conv.weight.is_contiguous()  # the weights keep their layout (and checkpoints theirs)
