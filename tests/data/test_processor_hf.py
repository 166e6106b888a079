"""ImageProcessor against transformers' PIL image processors: the same preprocessor_config.json gives the same
pixel_values on non-square, transparent and gray images, and a tiny random Hugging Face ViT folder gives the same
logits (and top label) through dlforge as through transformers on a non-square image."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="the parity tests compare against transformers")
Image = pytest.importorskip("PIL.Image")

from dlforge.data.processor import PREPROCESSOR_FILE, ImageProcessor  # noqa: E402
from dlforge.errors import DlforgeError  # noqa: E402

IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
# name -> preprocessor_config.json; what each exercises is in its name
CONFIGS = {
    "vit-square": dict(image_processor_type="ViTImageProcessor", do_resize=True, size={"height": 32, "width": 32},
                       resample=2, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, **IMAGENET),
    "vit-oblong-bicubic": dict(image_processor_type="ViTImageProcessor", size={"height": 24, "width": 40},
                               resample=3, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    "vit-legacy-int-size": dict(feature_extractor_type="ViTFeatureExtractor", size=28, resample=0),
    "vit-shortest-edge-crop": dict(image_processor_type="ViTImageProcessor", size={"shortest_edge": 30},
                                   do_center_crop=True, crop_size={"height": 26, "width": 22}, resample=4,
                                   **IMAGENET),
    "vit-capped-edges": dict(image_processor_type="ViTImageProcessor",
                             size={"shortest_edge": 40, "longest_edge": 48}, do_center_crop=True,
                             crop_size={"height": 36, "width": 36}, resample=1),
    "vit-crop-pads": dict(image_processor_type="ViTImageProcessor", do_resize=False, do_center_crop=True,
                          crop_size={"height": 65, "width": 90}, do_rescale=False, image_mean=[100.0, 90.0, 80.0],
                          image_std=[60.0, 50.0, 40.0]),
    "convnext-crop-pct": dict(image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 32},
                              crop_pct=0.8, resample=3, **IMAGENET),
    "convnext-warp": dict(image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 384}, resample=2),
    "resnet-50-as-on-the-hub": dict(feature_extractor_type="ConvNextFeatureExtractor", size=224, crop_pct=0.875,
                                    resample=3, do_normalize=True, do_resize=True, **IMAGENET),
    "bit-defaults": dict(image_processor_type="BitImageProcessor"),
}


def picture(width: int, height: int, mode: str = "RGB", seed: int = 0):
    """A PIL image with smooth structure and noise, so that resampling filters and crops all show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = [(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), ((x + 2 * y) * 7) % 256]
    array = np.stack(smooth, -1) + rng.integers(-40, 40, (height, width, 3))
    rgb = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if mode == "RGBA":  # alpha from opaque to clear across the image: transparency lies over white
        alpha = Image.fromarray((255 - x * 255 // max(width - 1, 1)).astype(np.uint8))
        rgb.putalpha(alpha)
        return rgb
    return rgb.convert(mode)


IMAGES = {"71x57": picture(71, 57), "57x71": picture(57, 71, seed=1), "300x200": picture(300, 200, seed=2),
          "rgba-64x40": picture(64, 40, "RGBA", seed=3), "gray-45x80": picture(45, 80, "L", seed=4)}


def hf_processor(raw: dict, directory):
    """transformers' PIL-backend processor of that preprocessor_config.json, read from a folder as users do."""
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(raw))
    name = raw.get("image_processor_type") or raw["feature_extractor_type"].replace("FeatureExtractor",
                                                                                     "ImageProcessor")
    return getattr(transformers, name + "Pil").from_pretrained(str(directory))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_pixel_values_equal_transformers(config, tmp_path):
    raw = CONFIGS[config]
    theirs = hf_processor(raw, tmp_path)
    ours = ImageProcessor.from_preprocessor_config(raw, image_size=224, channels=3)
    for name, image in IMAGES.items():
        expected = theirs(image, do_convert_rgb=True, return_tensors="pt").pixel_values
        got = ours(image)
        assert got.shape == expected.shape, f"{config} on {name}"
        assert (got - expected).abs().max().item() <= 1e-6, f"{config} on {name}"
    assert expected.std() > 0.1  # real pictures came out, not a constant


def test_warp_is_not_crop_on_a_non_square_image():
    """A ViTImageProcessor's {height, width} stretches the whole picture (the issue's 71×57 case): its left and
    right edges stay in the output, which dlforge's own shorter-side-and-crop processing cuts away."""
    image = np.zeros((57, 71), dtype=np.uint8)
    image[:, :3] = 255  # a white band at the left edge
    vit = {**CONFIGS["vit-square"], "image_mean": [0.5], "image_std": [0.5]}
    warp = ImageProcessor.from_preprocessor_config(vit, 224, 1)(image)
    crop = ImageProcessor(32, 1)(image)
    assert warp.shape == crop.shape == (1, 1, 32, 32)
    assert warp[0, 0, :, 0].min() > 0.9 and crop.max() == -1.0


def test_saved_processors_are_read_back_by_transformers(tmp_path):
    """What `save` writes, transformers' processor reads to the same pixels: dlforge's own processing (shorter side,
    then the centre square) and a Hugging Face checkpoint's (ConvNeXt's crop_pct rule) alike."""
    own = ImageProcessor(image_size=20, channels=3, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    convnext = ImageProcessor.from_preprocessor_config(CONFIGS["convnext-crop-pct"], 224, 3)
    for i, ours in enumerate((own, convnext)):
        folder = tmp_path / str(i)
        folder.mkdir()
        ours.save(folder)
        raw = json.loads((folder / PREPROCESSOR_FILE).read_text())
        theirs = getattr(transformers, raw["image_processor_type"] + "Pil").from_pretrained(str(folder))
        for image in IMAGES.values():
            torch.testing.assert_close(ours(image), theirs(image, return_tensors="pt").pixel_values, atol=1e-6,
                                       rtol=0)
        again = ImageProcessor.from_preprocessor_config(raw, ours.image_size, 3)
        assert again.settings() == ours.settings() and again.image_mean == ours.image_mean


def tiny_vit_folder(directory, preprocessor: dict):
    """A random ViTForImageClassification (5 labels, 32×32 images) saved with its preprocessor_config.json."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                    id2label={i: f"class{i}" for i in range(5)})
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # a head that separates the classes clearly, so that the top label means something
        model.classifier.weight.mul_(40.0)
    model.save_pretrained(str(directory))
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor))
    return model


@torch.no_grad()
def test_hf_vit_folder_gives_transformers_logits_on_a_non_square_image(tmp_path):
    import dlforge
    from dlforge.models import load_pretrained

    hf = tiny_vit_folder(tmp_path, CONFIGS["vit-square"])
    theirs = transformers.ViTImageProcessorPil.from_pretrained(str(tmp_path))
    model, _ = load_pretrained(tmp_path)
    processor = ImageProcessor.from_config(model.config)
    for name in ("71x57", "57x71", "300x200"):
        image = IMAGES[name]
        expected = hf(pixel_values=theirs(image, return_tensors="pt").pixel_values).logits
        got = model(processor(image)).logits
        assert (got - expected).abs().max().item() <= 1e-4, name
        assert got.argmax().item() == expected.argmax().item()
    # the pipeline takes the same way: an image file in, transformers' top label out
    IMAGES["71x57"].save(tmp_path / "cat.png")
    top = dlforge.pipeline("image-classification", model=str(tmp_path))(str(tmp_path / "cat.png"), top_k=1)
    expected = hf(pixel_values=theirs(IMAGES["71x57"], return_tensors="pt").pixel_values).logits
    assert top[0]["label"] == hf.config.id2label[expected.argmax().item()]


@pytest.mark.parametrize("raw, message", [
    (dict(image_processor_type="DetrImageProcessor"), "DetrImageProcessor.*not supported"),
    (dict(size={"max_height": 30, "max_width": 30}), "not a size dlforge can follow"),
    (dict(size={"height": 0, "width": 3}), "whole numbers >= 1"),
    (dict(resample=7), "not a PIL filter code"),
    (dict(image_processor_type="ConvNextImageProcessor", size={"height": 30, "width": 30}), "shortest_edge"),
    (dict(image_processor_type="ConvNextImageProcessor", crop_pct=0.0), "crop_pct"),
    (dict(do_center_crop=True, crop_size={"shortest_edge": 3}), "crop_size"),
    (dict(rescale_factor=-1.0), "rescale_factor"),
    (dict(image_mean="gray", image_std=[0.5]), "image_mean"),
])
def test_unusable_preprocessor_configs_are_named(raw, message):
    with pytest.raises(DlforgeError, match=message):
        ImageProcessor.from_preprocessor_config(raw, 32, 3)
