"""Parity of dlforge's ViT loader and saver against Hugging Face transformers.

Tiny random HF ViTs with non-default configs (gelu_new / relu, layer_norm_eps, patch 4 on 32×32 images,
1 or 3 channels, qkv_bias off) are saved with `save_pretrained` and loaded with `load_hf_vit`: hidden states,
pooler output, logits and loss must agree, with and without position interpolation. `save_hf_vit` must write
what transformers loads back to the same outputs. Damaged checkpoints fail with a DlforgeError naming the keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

transformers = pytest.importorskip("transformers")

from dlforge.data.processor import ImageProcessor  # noqa: E402
from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.models.converters.vit import load_hf_vit, save_hf_vit, state_dict_to_hf  # noqa: E402
from dlforge.models.vit import ViT, ViTConfig  # noqa: E402

TOL = 1e-4
# two deliberately non-default configs: (HF ViTConfig kwargs)
CONFIGS = {
    "rgb-gelu_new-noqkvbias": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=100,
                                   hidden_act="gelu_new", layer_norm_eps=1e-6, image_size=32, patch_size=4,
                                   num_channels=3, qkv_bias=False),
    "gray-relu": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=100,
                      hidden_act="relu", layer_norm_eps=1e-5, image_size=32, patch_size=4, num_channels=1),
}
LABELS = ["cat", "dog", "fox", "owl"]


def make_hf(cls_name: str, config: str = "rgb-gelu_new-noqkvbias", seed: int = 0, **overrides):
    """An HF model in eval mode whose weights (LN and biases included) are away from their init values."""
    torch.manual_seed(seed)
    kw = {**CONFIGS[config], **overrides}
    if cls_name == "ViTForImageClassification":
        kw.update(id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    model = getattr(transformers, cls_name)(transformers.ViTConfig(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def pixels(channels: int, h: int = 32, w: int | None = None, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, channels, h, w or h, generator=torch.Generator().manual_seed(seed))


def load(directory: Path, **kw) -> ViT:
    return load_hf_vit(directory, json.loads((directory / "config.json").read_text()), **kw).eval()


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """config name -> (HF ViTModel, its save_pretrained directory), for both configs."""
    out = {}
    for name in CONFIGS:
        hf = make_hf("ViTModel", name)
        directory = tmp_path_factory.mktemp(name)
        hf.save_pretrained(str(directory))
        out[name] = hf, directory
    return out


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    hf = make_hf("ViTForImageClassification", "gray-relu", seed=3)
    directory = tmp_path_factory.mktemp("classifier")
    hf.save_pretrained(str(directory))
    return hf, directory


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_vit_model_parity(saved, name):
    hf, directory = saved[name]
    model = load(directory)
    c = model.config
    assert (c.num_labels, c.pooler, c.qkv_bias) == (0, True, CONFIGS[name].get("qkv_bias", True))
    x = pixels(c.channels)
    ref = hf(pixel_values=x)
    assert max_diff(model.encode(x), ref.last_hidden_state) <= TOL
    assert max_diff(model.pool(x), ref.pooler_output) <= TOL
    # another resolution, square and not: HF's interpolate_pos_encoding=True, dlforge's automatic interpolation
    for h, w in ((48, 48), (24, 40)):
        x = pixels(c.channels, h, w)
        ref = hf(pixel_values=x, interpolate_pos_encoding=True)
        assert max_diff(model.encode(x), ref.last_hidden_state) <= TOL, (h, w)


@torch.no_grad()
def test_classifier_parity(saved_classifier):
    hf, directory = saved_classifier
    model = load(directory)
    assert model.config.labels == LABELS and model.config.num_labels == 4 and not model.config.pooler
    assert (directory / "model.safetensors").is_file()
    x, y = pixels(1, b=3), torch.tensor([0, 3, 1])
    ref, out = hf(pixel_values=x, labels=y), model(x, labels=y)
    assert max_diff(out.logits, ref.logits) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    x = pixels(1, 40)
    assert max_diff(model(x).logits, hf(pixel_values=x, interpolate_pos_encoding=True).logits) <= TOL


@torch.no_grad()
def test_other_weight_layouts(saved_classifier, tmp_path):
    """transformers 5's in-memory names, sharded safetensors and pytorch_model.bin all load alike."""
    hf, directory = saved_classifier
    expected = load(directory).state_dict()
    config = (directory / "config.json").read_text()
    layouts = {"in-memory": tmp_path / "a", "bin": tmp_path / "b"}
    for d in layouts.values():
        d.mkdir()
        (d / "config.json").write_text(config)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.startswith("vit.layers.0.attention.q_proj") for k in state)  # not the Hub's layout
    save_file(state, str(layouts["in-memory"] / "model.safetensors"))
    torch.save(state, layouts["bin"] / "pytorch_model.bin")
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for d in (*layouts.values(), tmp_path / "sharded"):
        state = load(d).state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected), d


@torch.no_grad()
def test_preprocessor_config_and_dtype(tmp_path):
    hf = make_hf("ViTModel")
    hf.to(torch.bfloat16).save_pretrained(str(tmp_path))
    hf.float()  # the reference: the bf16-rounded weights in fp32
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw.get("dtype", raw.get("torch_dtype")) == "bfloat16"
    model = load(tmp_path)
    assert model.embeddings.cls_token.dtype == torch.float32
    raw["torch_dtype"] = raw.pop("dtype", "bfloat16")  # transformers 4 names it torch_dtype
    (tmp_path / "config.json").write_text(json.dumps(raw))
    pre = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
           "image_std": [0.229, 0.224, 0.225], "size": {"height": 32, "width": 32}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    model = load(tmp_path)
    assert model.config.image_mean == pre["image_mean"] and model.config.image_std == pre["image_std"]
    assert model.config.image_size == 32
    # a preprocessor resolution other than image_size: position embeddings resized, as HF's interpolation
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "size": {"height": 48, "width": 48}}))
    model = load(tmp_path)
    assert model.config.image_size == 48
    x = pixels(3, 48)
    ref = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
    assert max_diff(model.encode(x), ref) <= TOL
    # a non-square processed size: the embeddings stay, each input interpolates them (HF's interpolate_pos_encoding)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "size": {"height": 32, "width": 48}}))
    model = load(tmp_path)
    assert model.config.image_size == 32 and model.config.preprocessing["size"] == {"height": 32, "width": 48}
    x = pixels(3, 32, 48)
    ref = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
    assert max_diff(model.encode(x), ref) <= TOL
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": False}))
    assert load(tmp_path).config.image_mean == [0.0, 0.0, 0.0]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [0.25] * 3}))
    assert load(tmp_path).config.image_std == [0.25, 0.25, 0.25]


@torch.no_grad()
def test_new_head_on_a_backbone(saved):
    hf, directory = saved["gray-relu"]
    base = load(directory)
    model = load(directory, task="image-classification", labels=["a", "b", "c"])
    assert model.config.num_labels == 3 and model.head is not None
    x = pixels(1)
    assert torch.equal(model.features(x), base.features(x))
    assert load(directory, num_labels=5).config.num_labels == 5
    assert load(directory, task="none").head is None
    with pytest.raises(DlforgeError, match="task must be one of"):
        load(directory, task="masked-lm")


@pytest.mark.parametrize("head", [False, True])
@torch.no_grad()
def test_save_hf_vit_round_trip(tmp_path, head):
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, channels=3, hidden_size=48, n_layer=2, n_head=3,
                       intermediate_size=100, activation="gelu_new", norm_eps=1e-6, qkv_bias=False,
                       pooler=not head, num_labels=4 if head else 0, labels=LABELS if head else None,
                       image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    model = ViT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf_vit(model, tmp_path / "hf")
    cls = transformers.ViTForImageClassification if head else transformers.ViTModel
    hf, info = cls.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    x = pixels(3)
    if head:
        assert hf.config.id2label[2] == "fox"
        assert max_diff(hf(pixel_values=x).logits, model(x).logits) <= TOL
    else:
        ref = hf(pixel_values=x)
        assert max_diff(ref.last_hidden_state, model.encode(x)) <= TOL
        assert max_diff(ref.pooler_output, model.pool(x)) <= TOL
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    # dlforge's own processing, spelled out: the shorter side to 32, then the centre square
    assert pre["image_mean"] == [0.4, 0.5, 0.6] and pre["size"] == {"shortest_edge": 32}
    assert pre["do_center_crop"] and pre["crop_size"] == {"height": 32, "width": 32}
    again = load(tmp_path / "hf")
    assert again.config == replace(config, preprocessing=ImageProcessor.from_config(config).settings())
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_gated_activation_cannot_be_saved(tmp_path):
    model = ViT(ViTConfig(image_size=8, patch_size=4, hidden_size=8, n_layer=1, n_head=2, intermediate_size=8,
                          activation="swiglu"))
    with pytest.raises(DlforgeError, match="swiglu"):
        save_hf_vit(model, tmp_path / "x")
    assert all(k.startswith(("embeddings.", "encoder.", "layernorm.")) for k in state_dict_to_hf(model))


def copy_checkpoint(directory: Path, target: Path, edit_state=None, edit_config=None) -> Path:
    from safetensors.torch import load_file

    target.mkdir()
    state = load_file(str(directory / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    if edit_state:
        edit_state(state)
    if edit_config:
        edit_config(config)
    save_file(state, str(target / "model.safetensors"))
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_damaged_checkpoints_name_the_problem(saved_classifier, tmp_path):
    _, directory = saved_classifier
    cases = [
        (lambda s: s.pop("vit.encoder.layer.1.layernorm_after.weight"), None, r"missing 1 .*layers\.1\.ln_2\.weight"),
        (lambda s: s.update({"vit.embeddings.position_embeddings": torch.zeros(1, 50, 48)}), None,
         r"shape mismatch .*embeddings\.position_embeddings \(1, 50, 48\) vs \(1, 65, 48\)"),
        (lambda s: s.update({"vit.extra.weight": torch.zeros(2)}), None, r"unexpected 1 .*extra\.weight"),
        (lambda s: s.pop("vit.encoder.layer.0.attention.attention.key.weight"), None,
         r"layers\.0\.attn\.c_attn\.weight are damaged: missing \['k'\]"),
        (None, lambda c: c.update(model_type="bert"), "not a Hugging Face ViT"),
        (None, lambda c: c.update(architectures=["ViTForMaskedImageModeling"]), "encoder_stride"),
        (None, lambda c: c.update(image_size=[32, 48]), "not square"),
        (None, lambda c: c.update(hidden_act="quick_gelu"), "quick_gelu"),
        (None, lambda c: c.update(pooler_act="relu"), "pooler"),
        (None, lambda c: c.update(problem_type="multi_label_classification"), "single-label"),
        (None, lambda c: c.update(patch_size=8), r"shape mismatch .*patch_embeddings"),
    ]
    for i, (edit_state, edit_config, message) in enumerate(cases):
        target = copy_checkpoint(directory, tmp_path / str(i), edit_state, edit_config)
        with pytest.raises(DlforgeError, match=message):
            load(target)
    target = copy_checkpoint(directory, tmp_path / "pre")
    (target / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(DlforgeError, match="not valid JSON"):
        load(target)
    (target / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.6], "image_std": [0.5]}))
    with pytest.raises(DlforgeError, match="give one per channel"):
        load(target)
