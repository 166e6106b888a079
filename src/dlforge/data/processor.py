"""ImageProcessor: pictures in any common form -> the normalised (N, C, H, W) tensor a vision model takes.

    processor = ImageProcessor.from_config(model.config)   # size, channels, mean/std the weights expect
    pixel_values = processor(["cat.png", pil_image, uint8_tensor])  # (3, C, H, W) float

Inputs: image file paths, PIL images, uint8 tensors (C, H, W) or (N, C, H, W), numpy arrays (H, W) or (H, W, C),
or an ImageSet's uint8 images. Each image is converted to the model's channels (gray <-> RGB), its shorter side
resized and the centre square cropped to `image_size` (no stretching), scaled to [0, 1] and normalised with
`image_mean` / `image_std` (Hugging Face's convention; ImageNet weights use mean 0.485, 0.456, 0.406), or mapped to
[-1, 1] when the model has no mean/std (dlforge's own image models). `save` writes Hugging Face's
preprocessor_config.json, which `from_pretrained` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DlforgeError
from ..io import atomic_write_json
from .images import IMAGE_SUFFIXES, ImageSet, _open_picture, _picture_tensor, resize_image_set

PREPROCESSOR_FILE = "preprocessor_config.json"


def expand_image_paths(inputs) -> list:
    """A folder becomes its image files (sorted, recursively); other inputs stay as they are."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    out = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            files = sorted(p for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DlforgeError(f"{item} holds no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...)")
            out.extend(str(p) for p in files)
        else:
            out.append(item)
    return out


def check_normalisation(image_mean, image_std, channels: int) -> None:
    """What a vision config's or processor's image_mean / image_std must be: both or neither, one value or one
    per channel, std > 0 (raises a DlforgeError naming the problem)."""
    if (image_mean is None) != (image_std is None):
        raise DlforgeError("give both image_mean and image_std, or neither (images then scaled to [-1, 1])")
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        if values is not None and len(values) not in (1, channels):
            raise DlforgeError(f"{name} has {len(values)} values for {channels}-channel images: give one per channel")
    if image_std is not None and min(image_std) <= 0:
        raise DlforgeError(f"image_std must be > 0, got {image_std}")


@dataclass
class ImageProcessor:
    image_size: int
    channels: int
    image_mean: list[float] | None = None  # per channel, on [0, 1] pixels; None: scale to [-1, 1]
    image_std: list[float] | None = None

    def __post_init__(self):
        check_normalisation(self.image_mean, self.image_std, self.channels)

    @classmethod
    def from_config(cls, config) -> ImageProcessor:
        """From a vision model's config (image_size, channels and optional image_mean / image_std)."""
        return cls(config.image_size, config.channels, getattr(config, "image_mean", None),
                   getattr(config, "image_std", None))

    # ---- converting
    def _to_uint8(self, image) -> torch.Tensor:
        """One input -> (C, H, W) uint8 at the model's channels, before resizing."""
        mode = {1: "L", 3: "RGB"}.get(self.channels)
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise DlforgeError(f"image {path} does not exist")
            return _picture_tensor(_open_picture(path, None, mode))
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            return _picture_tensor(image.convert(mode) if mode else image)
        if isinstance(image, np.ndarray):
            array = image if image.ndim == 3 else image[:, :, None]
            if array.ndim != 3:
                raise DlforgeError(f"a numpy image must be (H, W) or (H, W, C), got shape {image.shape}")
            image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        if torch.is_tensor(image):
            if image.dim() != 3:
                raise DlforgeError(f"an image tensor must be (C, H, W), got shape {tuple(image.shape)}")
            if image.dtype != torch.uint8:
                raise DlforgeError("image tensors must be uint8 (0..255); scale float images to 0..255 first")
            return image
        raise DlforgeError(f"cannot read an image from a {type(image).__name__}: give a file path, a PIL image, "
                           "a uint8 tensor (C, H, W) or a numpy array")

    def fit(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 -> the model's channels and a centre square of image_size (shorter side resized)."""
        images = resize_image_set(ImageSet(images, None, None, ""), None, self.channels).images
        h, w = images.shape[-2:]
        if h != w:  # centre square first, as load_image_folder does: no stretching
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            images = images[..., top:top + side, left:left + side]
        return resize_image_set(ImageSet(images, None, None, ""), self.image_size, None).images

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 at the model's size -> float, normalised as the weights expect."""
        x = images.float() / 255.0
        if self.image_mean is None:
            return x * 2.0 - 1.0
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images) -> torch.Tensor:
        """Images (see the module docstring) -> (N, C, image_size, image_size) float32."""
        if torch.is_tensor(images) and images.dim() == 4:
            if images.dtype != torch.uint8:
                raise DlforgeError("image tensors must be uint8 (0..255); scale float images to 0..255 first")
            return self.normalize(self.fit(images))
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise DlforgeError("no images given")
        return torch.cat([self.normalize(self.fit(self._to_uint8(item)[None])) for item in items])

    # ---- files (Hugging Face's preprocessor_config.json)
    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSOR_FILE
        mean = self.image_mean if self.image_mean is not None else [0.5] * self.channels
        std = self.image_std if self.image_std is not None else [0.5] * self.channels
        atomic_write_json(path, {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                                 "size": {"height": self.image_size, "width": self.image_size}, "resample": 2,
                                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                                 "image_mean": mean, "image_std": std, "num_channels": self.channels})
        return path

    @staticmethod
    def read_preprocessor_config(directory: str | Path) -> dict:
        """image_size / image_mean / image_std found in a preprocessor_config.json ({} when there is none)."""
        path = Path(directory) / PREPROCESSOR_FILE
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DlforgeError(f"{path} is not valid JSON ({e}): the checkpoint is damaged") from e
        found = {}
        size = raw.get("size")
        if isinstance(size, dict):
            size = size.get("height", size.get("shortest_edge"))
        if isinstance(size, int):
            found["image_size"] = size
        if raw.get("do_normalize", True) and "image_mean" in raw and "image_std" in raw:
            found["image_mean"], found["image_std"] = list(raw["image_mean"]), list(raw["image_std"])
        return found

