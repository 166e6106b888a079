"""ImageProcessor: every input form gives the same normalised tensor; resizing, channels, files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dlforge.data.processor import ImageProcessor, expand_image_paths
from dlforge.errors import DlforgeError


def gradient_image(h: int = 20, w: int = 30) -> torch.Tensor:
    """(3, h, w) uint8 with different content per channel and position."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([x * 8, y * 12, (x + y) * 4]).clamp(0, 255).to(torch.uint8)


def test_all_input_forms_agree(tmp_path):
    from PIL import Image

    image = gradient_image()
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array).save(tmp_path / "a.png")
    processor = ImageProcessor(image_size=16, channels=3)
    from_tensor = processor(image)
    for other in (processor(tmp_path / "a.png"), processor(str(tmp_path / "a.png")), processor(Image.fromarray(array)),
                  processor(array), processor(image[None]), processor([image])):
        torch.testing.assert_close(other, from_tensor)
    assert from_tensor.shape == (1, 3, 16, 16) and from_tensor.dtype == torch.float32
    assert processor([image, image]).shape == (2, 3, 16, 16)


def test_centre_crop_keeps_the_middle_and_scales_to_signed_unit():
    image = torch.zeros(1, 10, 30, dtype=torch.uint8)
    image[:, :, 10:20] = 255  # a white band in the middle third: exactly the centre square
    out = ImageProcessor(image_size=10, channels=1)(image)
    assert out.shape == (1, 1, 10, 10)
    torch.testing.assert_close(out, torch.ones_like(out))  # 255 -> +1, no black from the sides
    black = ImageProcessor(image_size=4, channels=1)(torch.zeros(1, 4, 4, dtype=torch.uint8))
    torch.testing.assert_close(black, -torch.ones_like(black))


def test_mean_std_normalisation_and_channel_conversion():
    gray = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    processor = ImageProcessor(image_size=8, channels=3, image_mean=[0.5, 0.25, 0.0], image_std=[0.5, 0.25, 2.0])
    out = processor(gray)  # gray repeated to RGB, then (1 - mean) / std per channel
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    rgb = torch.zeros(3, 8, 8, dtype=torch.uint8)
    rgb[1] = 255  # pure green -> luma 0.587
    luma = ImageProcessor(image_size=8, channels=1)(rgb)
    assert luma[0, 0, 0, 0].item() == pytest.approx(round(0.587 * 255) / 127.5 - 1, abs=1e-6)


def test_save_and_read_preprocessor_config(tmp_path):
    processor = ImageProcessor(image_size=32, channels=3, image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225])
    raw = json.loads(processor.save(tmp_path).read_text())
    # dlforge's own processing in Hugging Face's terms: the shorter side to 32, then the centre 32 × 32
    assert raw["size"] == {"shortest_edge": 32} and raw["do_center_crop"] is True
    assert raw["crop_size"] == {"height": 32, "width": 32} and raw["image_mean"] == [0.485, 0.456, 0.406]
    read = ImageProcessor.from_preprocessor_config(raw, image_size=224, channels=3)
    assert read.settings() == processor.settings() and read.image_std == [0.229, 0.224, 0.225]
    # dlforge's own [-1, 1] scaling is written as mean = std = 0.5, which is the same mapping
    signed = ImageProcessor(image_size=8, channels=1)
    raw = json.loads(signed.save(tmp_path).read_text())
    read = ImageProcessor.from_preprocessor_config(raw, image_size=8, channels=1)
    assert read.image_mean == [0.5] and raw["do_convert_rgb"] is False
    image = gradient_image(12, 9)[:1]
    torch.testing.assert_close(read(image), signed(image))


def test_a_model_config_carries_its_processing():
    """from_config follows the config's `preprocessing` settings; without them, dlforge's own processing."""
    from dlforge.models import ViTConfig

    image = gradient_image(20, 30)
    plain = ViTConfig(image_size=16, patch_size=8, hidden_size=8, n_layer=1, n_head=2, intermediate_size=8)
    torch.testing.assert_close(ImageProcessor.from_config(plain)(image), ImageProcessor(16, 3)(image))
    stretch = ImageProcessor(16, 3, size={"height": 16, "width": 16}, resample=3)
    config = replace(plain, preprocessing=stretch.settings())
    out = ImageProcessor.from_config(config)(image)
    torch.testing.assert_close(out, stretch(image))
    assert not torch.allclose(out, ImageProcessor(16, 3)(image))  # stretched, not cropped
    with pytest.raises(DlforgeError, match="must be a dict"):
        replace(plain, preprocessing="stretch")
    with pytest.raises(DlforgeError, match="unknown preprocessing settings colour"):
        replace(plain, preprocessing={"colour": "red"})
    with pytest.raises(DlforgeError, match="resample"):
        replace(plain, preprocessing={**stretch.settings(), "resample": 9})


def test_folders_expand_to_their_images(tmp_path):
    from PIL import Image

    for name in ("b/2.png", "a/1.jpg", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / name)
    assert expand_image_paths(tmp_path) == [str(tmp_path / "a/1.jpg"), str(tmp_path / "b/2.png")]
    assert expand_image_paths(["x.png", tmp_path / "b"]) == ["x.png", str(tmp_path / "b/2.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DlforgeError, match="holds no images"):
        expand_image_paths(tmp_path / "empty")


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(3, 4, 4), "must be uint8"),
    (torch.zeros(4, 4, dtype=torch.uint8), r"must be \(C, H, W\)"),
    (np.zeros((2, 2, 2, 2), dtype=np.uint8), r"must be \(H, W\) or \(H, W, C\)"),
    (3.5, "cannot read an image from a float"),
    ("missing.png", "does not exist"),
    ([], "no images given"),
])
def test_bad_inputs(bad, message):
    with pytest.raises(DlforgeError, match=message):
        ImageProcessor(image_size=4, channels=1)(bad)


def test_bad_settings():
    with pytest.raises(DlforgeError, match="both image_mean and image_std"):
        ImageProcessor(4, 3, image_mean=[0.5] * 3)
    with pytest.raises(DlforgeError, match="3 values for 1-channel"):
        ImageProcessor(4, 1, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with pytest.raises(DlforgeError, match="must be > 0"):
        ImageProcessor(4, 1, image_mean=[0.5], image_std=[0.0])


def test_augment_images_fills_with_the_background_per_channel():
    from dlforge.data.images import augment_images

    images = torch.ones(6, 3, 5, 5)
    fill = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1)
    out = augment_images(images, torch.Generator().manual_seed(0), crop_padding=2, fill=fill)
    assert out.shape == images.shape
    shifted = [i for i in range(6) if not torch.equal(out[i], images[i])]
    assert shifted  # some images moved; what came in from the border is each channel's background
    for i in shifted:
        for c, value in enumerate((-1.0, -2.0, -3.0)):
            assert set(out[i, c].unique().tolist()) <= {1.0, value}
    again = augment_images(images, torch.Generator().manual_seed(0), crop_padding=2, fill=fill)
    assert torch.equal(out, again)  # a seeded generator gives the same batch
    flipped = augment_images(torch.arange(4.0).view(1, 1, 1, 4).repeat(8, 1, 1, 1), torch.Generator().manual_seed(1),
                             flip=True)
    rows = {tuple(r.flatten().tolist()) for r in flipped}
    assert rows == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}


def test_random_rotations_and_zooms_move_pixels_about_the_centre():
    from dlforge.data.images import augment_images, random_affine

    # a bar across the middle row of 15x15 images: rotations tilt it, the centre pixel stays lit
    bar = torch.full((64, 1, 15, 15), -1.0)
    bar[:, :, 7, 2:13] = 1.0
    out = augment_images(bar, torch.Generator().manual_seed(0), rotate=30, fill=-1.0)
    assert out.shape == bar.shape and out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    assert torch.all(out[:, 0, 7, 7] > 0.9)  # the centre is the fixed point
    off_row = (out[:, 0].clone().index_fill_(1, torch.tensor([7]), -1.0) > 0).flatten(1).any(dim=1)
    assert off_row.float().mean() > 0.5  # most bars tilted off their row
    assert torch.equal(out, augment_images(bar, torch.Generator().manual_seed(0), rotate=30, fill=-1.0))
    # a zoom out (factor < 1) brings in background from outside; per-channel fill as for translations
    ones = torch.ones(16, 3, 9, 9)
    fill = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1)
    shrunk = random_affine(ones, torch.Generator().manual_seed(1), rotate=0.0, scale=0.5, fill=fill)
    corners = shrunk[:, :, 0, 0]  # (16, 3): background where the image shrank, 1 where it grew
    for c, value in enumerate((-1.0, -2.0, -3.0)):
        assert (corners[:, c] - value).abs().min() < 1e-5 and (corners[:, c] - 1).abs().min() < 1e-5
    # no rotation and no zoom: the image back, bilinear sampling at the pixel centres
    same = random_affine(bar, torch.Generator().manual_seed(2), rotate=0.0, scale=0.0, fill=-1.0)
    torch.testing.assert_close(same, bar)
