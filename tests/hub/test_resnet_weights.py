"""Loading ResNet weights: torchvision/timm-named state dicts (checked against a forward pass written here with
torch.nn.functional on those names) and Hugging Face transformers ResNet directories (checked against
transformers itself on small random non-default configs). Damaged files fail naming the keys."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dlforge.errors import DlforgeError
from dlforge.models.converters.resnet import (
    load_hf_resnet,
    load_torchvision_resnet,
    save_torchvision_resnet,
    to_torchvision,
)
from dlforge.models.resnet import IMAGENET_MEAN, ResNet, ResNetConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOL = 1e-5


# ------------------------------------------------------------------ torchvision layout, built by hand
def bn_tensors(prefix: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {prefix + "weight": torch.rand(n, generator=g) + 0.5, prefix + "bias": torch.randn(n, generator=g) * 0.1,
            prefix + "running_mean": torch.randn(n, generator=g) * 0.1,
            prefix + "running_var": torch.rand(n, generator=g) + 0.5,
            prefix + "num_batches_tracked": torch.tensor(7)}


def conv_tensor(c_out: int, c_in: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5


def torchvision_state(block: str, depths, widths, stem_width: int, stem_kernel: int = 7, channels: int = 3,
                      classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under torchvision's ResNet names (written from torchvision's layout, not from dlforge)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": conv_tensor(stem_width, channels, stem_kernel, g), **bn_tensors("bn1.", stem_width, g)}
    expansion = 4 if block == "bottleneck" else 1
    c_in = stem_width
    for s, (depth, width) in enumerate(zip(depths, widths), start=1):
        for b in range(depth):
            p, out = f"layer{s}.{b}.", width * expansion
            if block == "basic":
                shapes = [(width, c_in, 3), (width, width, 3)]
            else:
                shapes = [(width, c_in, 1), (width, width, 3), (out, width, 1)]
            for k, (o, i, kernel) in enumerate(shapes, start=1):
                sd[f"{p}conv{k}.weight"] = conv_tensor(o, i, kernel, g)
                sd.update(bn_tensors(f"{p}bn{k}.", o, g))
            if b == 0 and (s > 1 or c_in != out):
                sd[p + "downsample.0.weight"] = conv_tensor(out, c_in, 1, g)
                sd.update(bn_tensors(p + "downsample.1.", out, g))
            c_in = out
    sd["fc.weight"], sd["fc.bias"] = torch.randn(classes, c_in, generator=g) * 0.1, torch.randn(classes, generator=g)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features, logits) of torchvision's ResNet v1.5 in eval mode, straight from the named tensors."""
    def bn(h, prefix):
        return F.batch_norm(h, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                            sd[prefix + "bias"], training=False, eps=1e-5)

    stem = sd["conv1.weight"]
    if stem.shape[-1] == 7:
        h = F.max_pool2d(F.relu(bn(F.conv2d(x, stem, stride=2, padding=3), "bn1.")), 3, stride=2, padding=1)
    else:
        h = F.relu(bn(F.conv2d(x, stem, padding=1), "bn1."))
    s = 1
    while f"layer{s}.0.conv1.weight" in sd:
        b = 0
        while f"layer{s}.{b}.conv1.weight" in sd:
            p = f"layer{s}.{b}."
            stride = 2 if s > 1 and b == 0 else 1
            if p + "conv3.weight" in sd:  # bottleneck: stride on the 3×3
                out = F.relu(bn(F.conv2d(h, sd[p + "conv1.weight"]), p + "bn1."))
                out = F.relu(bn(F.conv2d(out, sd[p + "conv2.weight"], stride=stride, padding=1), p + "bn2."))
                out = bn(F.conv2d(out, sd[p + "conv3.weight"]), p + "bn3.")
            else:
                out = F.relu(bn(F.conv2d(h, sd[p + "conv1.weight"], stride=stride, padding=1), p + "bn1."))
                out = bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), p + "bn2.")
            if p + "downsample.0.weight" in sd:
                h = bn(F.conv2d(h, sd[p + "downsample.0.weight"], stride=stride), p + "downsample.1.")
            h = F.relu(out + h)
            b += 1
        s += 1
    pooled = h.mean(dim=(2, 3))
    return pooled, F.linear(pooled, sd["fc.weight"], sd["fc.bias"])


NETS = {  # name -> (block, depths, widths, stem_width, stem kernel)
    "basic": ("basic", [1, 2], [4, 8], 6, 7),  # stem width 6 != 4: stage 1 projects too
    "bottleneck": ("bottleneck", [2, 1, 1], [4, 6, 8], 8, 7),
    "basic-small-stem": ("basic", [2, 1], [8, 12], 8, 3),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_state_dict_matches_reference_forward(tmp_path, name, suffix):
    block, depths, widths, stem_width, kernel = NETS[name]
    sd = torchvision_state(block, depths, widths, stem_width, kernel)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    model = load_torchvision_resnet(path).eval()
    c = model.config
    assert (c.block, c.depths, c.widths, c.stem) == (block, depths, widths, "imagenet" if kernel == 7 else "small")
    assert c.num_labels == 5 and c.labels is None and c.image_mean == IMAGENET_MEAN
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pooled, logits = reference_forward(sd, x)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), pooled, atol=TOL, rtol=TOL)
        torch.testing.assert_close(model(x).logits, logits, atol=TOL, rtol=TOL)
    assert int(model.layers[0].bn1.num_batches_tracked) == 7
    # the inverse mapping gives back exactly the torchvision names, and a save -> load round trip is lossless
    assert set(to_torchvision(model)) == set(sd)
    again = load_torchvision_resnet(save_torchvision_resnet(model, tmp_path / f"again{suffix}")).eval()
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


def test_torchvision_variants_of_the_file(tmp_path):
    """Nested training checkpoints, a DataParallel prefix, no num_batches_tracked, a preset arch, a new head."""
    sd = torchvision_state("basic", [2, 2, 2, 2], [2, 3, 4, 5], 2, seed=3)
    x = torch.randn(1, 3, 64, 64)
    pooled, logits = reference_forward(sd, x)
    stripped = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in stripped.items()}}, tmp_path / "ckpt.pt")
    model = load_torchvision_resnet(tmp_path / "ckpt.pt", labels=list("abcde")).eval()
    assert model.config.labels == list("abcde") and model.config.depths == [2, 2, 2, 2]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, logits, atol=TOL, rtol=TOL)
    torch.save({"model": sd}, tmp_path / "model.bin")
    fresh = load_torchvision_resnet(tmp_path / "model.bin", num_labels=7).eval()
    assert fresh.head.out_features == 7 and fresh.config.labels is None
    backbone = load_torchvision_resnet(tmp_path / "model.bin", num_labels=0, image_size=96).eval()
    assert backbone.head is None and backbone.config.image_size == 96
    with torch.no_grad():
        torch.testing.assert_close(fresh.features(x), pooled, atol=TOL, rtol=TOL)
        torch.testing.assert_close(backbone.features(x), pooled, atol=TOL, rtol=TOL)
    # an arch that does not fit the file: the mis-shaped tensors are named
    with pytest.raises(DlforgeError, match=r"shape mismatch.*embeddings.conv.weight \(2, 3, 7, 7\) vs \(64, 3, 7, 7\)"):
        load_torchvision_resnet(tmp_path / "model.bin", arch="resnet18")


def test_torchvision_errors(tmp_path):
    sd = torchvision_state("bottleneck", [1, 1], [4, 8], 4)
    def save(state, name):
        save_file(state, str(tmp_path / name))
        return tmp_path / name

    with pytest.raises(DlforgeError, match="does not exist"):
        load_torchvision_resnet(tmp_path / "nothing.pth")
    with pytest.raises(DlforgeError, match="not a torchvision/timm-style ResNet"):
        load_torchvision_resnet(save({"encoder.weight": torch.zeros(1)}, "other.safetensors"))
    missing = {k: v for k, v in sd.items() if k != "layer2.0.bn3.running_var"}
    with pytest.raises(DlforgeError, match=r"missing 1 weight\(s\): layers.1.bn3.running_var"):
        load_torchvision_resnet(save(missing, "missing.safetensors"))
    with pytest.raises(DlforgeError, match=r"unexpected 1 weight\(s\): layer1.0.se.fc.weight"):
        load_torchvision_resnet(save({**sd, "layer1.0.se.fc.weight": torch.zeros(2)}, "extra.safetensors"))
    bad = {**sd, "layer2.0.conv2.weight": torch.zeros(8, 8, 5, 5)}
    with pytest.raises(DlforgeError, match=r"shape mismatch.*layers.1.conv2.weight \(8, 8, 5, 5\) vs \(8, 8, 3, 3\)"):
        load_torchvision_resnet(save(bad, "bad.safetensors"))
    wide = {**sd, "layer1.0.conv3.weight": torch.zeros(32, 4, 1, 1)}
    with pytest.raises(DlforgeError, match="wide ResNets"):
        load_torchvision_resnet(save(wide, "wide.safetensors"))
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")  # as timm's
    with pytest.raises(DlforgeError, match="other than plain tensors.*re-save the weights as safetensors") as info:
        load_torchvision_resnet(tmp_path / "pickled.pth")
    assert "weights_only" not in str(info.value) and info.value.__cause__ is None  # torch's advice is not passed on
    with pytest.raises(DlforgeError, match="unknown ResNet arch"):
        load_torchvision_resnet(save(sd, "ok.safetensors"), arch="resnet7")
    v1 = ResNet(ResNetConfig(block="bottleneck", depths=[1], widths=[4], stride_in_1x1=True))
    with pytest.raises(DlforgeError, match="stride_in_1x1"):
        save_torchvision_resnet(v1, tmp_path / "v1.safetensors")
    with pytest.raises(DlforgeError, match="format"):
        save_torchvision_resnet(ResNet(ResNetConfig(depths=[1], widths=[4])), tmp_path / "w.npz")


# ------------------------------------------------------------------ Hugging Face transformers parity
def hf_model(head: str, seed: int = 0, **overrides):
    transformers = pytest.importorskip("transformers")
    kw = dict(num_channels=2, embedding_size=6, hidden_sizes=[8, 12, 16], depths=[1, 2, 1], layer_type="basic",
              id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2})
    kw.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, "ResNet" + head)(transformers.ResNetConfig(**kw)).eval()
    with torch.no_grad():  # move BN statistics and affine away from their identity init, so the test can fail
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return model


def save_hf(model, directory, preprocessor: dict | None = None) -> tuple:
    model.save_pretrained(str(directory))
    if preprocessor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory, json.loads((directory / "config.json").read_text())


HF_CONFIGS = {
    "basic": {},
    "bottleneck": dict(layer_type="bottleneck", hidden_sizes=[16, 24, 32]),
    "bottleneck-v1-first-stage-strided": dict(layer_type="bottleneck", hidden_sizes=[8, 16, 32], depths=[2, 1, 1],
                                              downsample_in_bottleneck=True, downsample_in_first_stage=True),
}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_hf_parity(tmp_path, name):
    hf = hf_model("ForImageClassification", **HF_CONFIGS[name])
    directory, raw = save_hf(hf, tmp_path / "cls", {"size": {"shortest_edge": 48}, "image_mean": [0.4, 0.5],
                                                   "image_std": [0.2, 0.3], "do_normalize": True})
    model = load_hf_resnet(directory, raw).eval()
    c = model.config
    assert c.labels == ["cat", "dog", "bird"] and c.image_size == 48 and c.image_std == [0.2, 0.3]
    assert c.stride_in_1x1 == (name == "bottleneck-v1-first-stage-strided")
    x = torch.randn(2, 2, 45, 45, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        theirs = hf(pixel_values=x, labels=labels)
        ours = model(x, labels)
        pooled = hf.resnet(pixel_values=x).pooler_output.flatten(1)
        torch.testing.assert_close(model.features(x), pooled, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-4, rtol=1e-4)
    # the backbone class (no "resnet." prefix, no classifier) gives the same features
    base = hf_model("Model", seed=1, **HF_CONFIGS[name])
    directory, raw = save_hf(base, tmp_path / "base")
    backbone = load_hf_resnet(directory, raw).eval()
    assert backbone.head is None and backbone.config.image_mean is None  # 2 channels: no ImageNet default
    with torch.no_grad():
        torch.testing.assert_close(backbone.features(x), base(pixel_values=x).pooler_output.flatten(1),
                                   atol=1e-4, rtol=1e-4)


def test_hf_heads_and_errors(tmp_path, edit_weights):
    hf = hf_model("ForImageClassification", num_channels=3)
    directory, raw = save_hf(hf, tmp_path / "cls")
    x = torch.randn(1, 3, 40, 40)
    model = load_hf_resnet(directory, raw)
    assert model.config.image_mean == IMAGENET_MEAN  # no preprocessor_config.json: HF's ImageNet default
    new = load_hf_resnet(directory, raw, task="image-classification", labels=["yes", "no"]).eval()
    assert new.head.out_features == 2 and new.config.labels == ["yes", "no"]
    kept = load_hf_resnet(directory, raw, task="image-classification", num_labels=3)
    assert torch.equal(kept.head.weight, hf.classifier[1].weight)
    none = load_hf_resnet(directory, raw, task="none").eval()
    assert none.head is None
    with torch.no_grad():
        torch.testing.assert_close(new.features(x), hf.resnet(pixel_values=x).pooler_output.flatten(1),
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(DlforgeError, match="task 'token-classification'"):
        load_hf_resnet(directory, raw, task="token-classification")
    with pytest.raises(DlforgeError, match="hidden_act='gelu'"):
        load_hf_resnet(directory, {**raw, "hidden_act": "gelu"})
    with pytest.raises(DlforgeError, match="not a ResNet"):
        load_hf_resnet(directory, {**raw, "model_type": "vit"})
    with pytest.raises(DlforgeError, match="divisible by 4"):
        load_hf_resnet(directory, {**raw, "layer_type": "bottleneck", "hidden_sizes": [10, 12, 16]})
    base_dir, base_raw = save_hf(hf_model("Model"), tmp_path / "base")
    with pytest.raises(DlforgeError, match="no classification head"):
        load_hf_resnet(base_dir, base_raw, task="image-classification")

    def damage(state):
        del state["resnet.encoder.stages.1.layers.0.shortcut.normalization.weight"]
        state["resnet.encoder.stages.2.layers.0.layer.1.convolution.weight"] = torch.zeros(16, 16, 1, 1)
    edit_weights(directory, damage)
    with pytest.raises(DlforgeError, match=r"missing 1 weight\(s\): layers.1.shortcut.1.weight.*"
                                           r"shape mismatch.*layers.3.conv2.weight \(16, 16, 1, 1\)"):
        load_hf_resnet(directory, raw)


@torch.no_grad()
def test_hf_folder_processes_non_square_images_as_transformers(tmp_path):
    """A ResNet folder with microsoft/resnet-50's kind of preprocessor_config.json (ConvNeXt's processor under its
    old feature-extractor name, a bare int size, crop_pct): on non-square pictures dlforge's processor and model
    give transformers' pixel values and logits."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from dlforge.data.processor import ImageProcessor

    hf = hf_model("ForImageClassification", num_channels=3)
    preprocessor = {"feature_extractor_type": "ConvNextFeatureExtractor", "size": 40, "crop_pct": 0.875,
                    "resample": 3, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
                    "image_std": [0.229, 0.224, 0.225]}
    directory, raw = save_hf(hf, tmp_path / "cls", preprocessor)
    model = load_hf_resnet(directory, raw).eval()
    assert model.config.image_size == 40 and model.config.preprocessing["crop_pct"] == 0.875
    theirs = transformers.ConvNextImageProcessorPil.from_pretrained(str(directory))
    ours = ImageProcessor.from_config(model.config)
    rng = torch.Generator().manual_seed(3)
    for width, height in ((71, 57), (57, 71), (300, 200)):
        image = Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=rng, dtype=torch.uint8).numpy())
        expected = theirs(image, return_tensors="pt").pixel_values
        pixels = ours(image)
        assert pixels.shape == expected.shape == (1, 3, 40, 40)
        assert (pixels - expected).abs().max().item() <= 1e-6
        torch.testing.assert_close(model(pixels).logits, hf(pixel_values=expected).logits, atol=1e-4, rtol=1e-4)
