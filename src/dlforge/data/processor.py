"""ImageProcessor: pictures in any common form -> the normalised (N, C, H, W) tensor a vision model takes.

    processor = ImageProcessor.from_config(model.config)   # the processing the model's weights expect
    pixel_values = processor(["cat.png", pil_image, uint8_tensor])  # (3, C, H, W) float

Inputs: image file paths, PIL images, uint8 tensors (C, H, W) or (N, C, H, W), numpy arrays (H, W) or (H, W, C),
or an ImageSet's uint8 images. Each image is converted to the model's channels (transparency laid over white,
gray <-> RGB), then processed as Hugging Face's image processors do, step by step and with their settings:

- resize (`do_resize`, `size`, `resample`: a PIL filter code, 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic,
  4 box, 5 hamming): `{"height", "width"}` resizes to exactly that (the aspect ratio is not kept);
  `{"shortest_edge"}` scales the shorter side to it; `{"shortest_edge", "longest_edge"}` also caps the longer
  side. `ConvNextImageProcessor` (ResNet and ConvNeXt checkpoints) has its own rule: a shortest_edge below 384
  scales the shorter side to shortest_edge / `crop_pct` and crops the centre shortest_edge square; 384 and
  above resize to that square;
- centre crop (`do_center_crop`, `crop_size`; an image smaller than the crop is padded with black);
- rescale (`do_rescale`, `rescale_factor`, 1/255 maps 0..255 to 0..1), normalise with `image_mean` / `image_std`
  (or map [0, 1] to [-1, 1] when the model has no mean/std: dlforge's own image models).

Resizing goes through PIL with the same filter, so pixels equal transformers' (its PIL image processors).
`from_preprocessor_config` reads a checkpoint's preprocessor_config.json (keys it leaves out take the defaults of
its `image_processor_type`: ViTImageProcessor, ConvNextImageProcessor or BitImageProcessor, old
`*FeatureExtractor` names included; an unknown type is refused). A model config carries these settings in its
`preprocessing` field; None there means dlforge's own processing: the shorter side resized to `image_size`, then
the centre square (no stretching), bilinear. `save` writes preprocessor_config.json, which transformers reads
back to the same processing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import DlforgeError
from ..io import atomic_write_json
from .images import IMAGE_SUFFIXES, _open_picture, _picture_tensor, picture_in_mode

PREPROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL codes
CONVNEXT = "ConvNextImageProcessor"
CONVNEXT_WARP_EDGE = 384  # ConvNeXt's rule: from this shortest_edge on, images are resized to the square uncropped
SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})


@dataclass(frozen=True)
class ProcessorDefaults:
    """What a transformers image processor class uses for a key its preprocessor_config.json leaves out."""

    size: dict
    resample: int
    square_int_size: bool  # a bare integer `size` means a square (else: the shortest edge)
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    crop_pct: float | None = None
    do_center_crop: bool = False
    crop_size: dict | None = None


STANDARD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN and _STD
PROCESSOR_DEFAULTS = {
    "ViTImageProcessor": ProcessorDefaults({"height": 224, "width": 224}, 2, True, STANDARD, STANDARD),
    CONVNEXT: ProcessorDefaults({"shortest_edge": 384}, 3, False, STANDARD, STANDARD, crop_pct=224 / 256),
    "BitImageProcessor": ProcessorDefaults({"shortest_edge": 224}, 3, False, (0.48145466, 0.4578275, 0.40821073),
                                           (0.26862954, 0.26130258, 0.27577711), do_center_crop=True,
                                           crop_size={"height": 224, "width": 224}),
}


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


def check_image_processing(config) -> None:
    """A vision model config's image_mean / image_std and `preprocessing` settings are usable (else DlforgeError)."""
    ImageProcessor.from_config(config)


def canonical_processor_type(name) -> str:
    """transformers' processor class name without its backend suffix, feature-extractor names mapped to the
    image-processor ones (ViTFeatureExtractor, ViTImageProcessorFast -> ViTImageProcessor)."""
    if not isinstance(name, str):
        raise DlforgeError(f"image_processor_type must be a class name, got {name!r}")
    base = name.removesuffix("Fast").removesuffix("Pil").replace("FeatureExtractor", "ImageProcessor")
    if base not in PROCESSOR_DEFAULTS:
        raise DlforgeError(f"image processor {name!r} is not supported: dlforge follows "
                           f"{', '.join(PROCESSOR_DEFAULTS)}; edit preprocessor_config.json to one of them")
    return base


def size_dict(value, square_int: bool, name: str) -> dict:
    """A preprocessor config's size in transformers' dict form: an int is a square (square_int) or the shortest
    edge, a [height, width] pair a fixed size; dicts must have one of the SIZE_KEYS sets of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"height": value, "width": value} if square_int else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if not isinstance(value, dict) or set(value) not in SIZE_KEYS:
        raise DlforgeError(f"{name}={value!r} is not a size dlforge can follow: give {{'height', 'width'}}, "
                           "{'shortest_edge'} or {'shortest_edge', 'longest_edge'}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value.values()):
        raise DlforgeError(f"{name}={value!r} must hold whole numbers >= 1")
    return dict(value)


def shortest_edge_shape(height: int, width: int, edge: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to `edge` and the longer one in proportion, rounded down."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def capped_shape(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """(height, width) for {shortest_edge, longest_edge}: the shorter side to `shortest` unless the longer side
    would pass `longest`, then the longer side to `longest` (transformers' get_size_with_aspect_ratio)."""
    raw = None
    if max(height, width) / min(height, width) * shortest > longest:
        raw = longest * min(height, width) / max(height, width)
        shortest = int(round(raw))
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    scale = raw if raw is not None else shortest
    if width < height:
        return int(scale * height / width), shortest
    return shortest, int(scale * width / height)


def resize_planes(image: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """(C, H, W) uint8 -> (C, height, width) with PIL's filter `resample`, one channel at a time (PIL resamples
    each channel of an RGB image alone, so this equals resizing the RGB picture)."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    from PIL import Image

    planes = [np.asarray(Image.fromarray(plane.numpy()).resize((width, height), resample=resample))
              for plane in image]
    return torch.from_numpy(np.stack(planes))


def centre_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre height×width window of (C, H, W); where the image is smaller it is padded with zeros (black)
    around it first, the padding's odd pixel going before the image, as transformers does."""
    H, W = image.shape[-2:]
    if height <= H and width <= W:
        top, left = (H - height) // 2, (W - width) // 2
        return image[:, top:top + height, left:left + width]
    canvas_h, canvas_w = max(height, H), max(width, W)
    top_pad, left_pad = math.ceil((canvas_h - H) / 2), math.ceil((canvas_w - W) / 2)
    canvas = image.new_zeros((image.shape[0], canvas_h, canvas_w))
    canvas[:, top_pad:top_pad + H, left_pad:left_pad + W] = image
    top, left = (H - height) // 2 + top_pad, (W - width) // 2 + left_pad
    return canvas[:, max(0, top):min(canvas_h, top + height), max(0, left):min(canvas_w, left + width)]


@dataclass
class ImageProcessor:
    """Hugging Face's image-processor settings (same names); see the module docstring for each step."""

    image_size: int  # the model's square side: with `size` None, the shorter side's length and the crop
    channels: int
    image_mean: list[float] | None = None  # per channel, on rescaled pixels; None: map [0, 1] to [-1, 1]
    image_std: list[float] | None = None
    image_processor_type: str = "ViTImageProcessor"
    do_resize: bool = True
    size: dict | None = None  # None: {"shortest_edge": image_size} and a centre crop (dlforge's own processing)
    resample: int = 2  # PIL filter code
    crop_pct: float | None = None  # ConvNextImageProcessor only
    do_center_crop: bool | None = None  # None: crop exactly when `size` is None
    crop_size: dict | None = None  # None: image_size × image_size
    do_rescale: bool = True
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        check_normalisation(self.image_mean, self.image_std, self.channels)
        self.image_processor_type = canonical_processor_type(self.image_processor_type)
        if self.do_center_crop is None:
            self.do_center_crop = self.size is None
        square = {"height": self.image_size, "width": self.image_size}
        self.size = size_dict({"shortest_edge": self.image_size} if self.size is None else self.size, True, "size")
        self.crop_size = size_dict(square if self.crop_size is None else self.crop_size, True, "crop_size")
        for name in ("do_resize", "do_center_crop", "do_rescale"):
            if not isinstance(getattr(self, name), bool):
                raise DlforgeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if set(self.crop_size) != {"height", "width"}:
            raise DlforgeError(f"crop_size={self.crop_size} must be {{'height', 'width'}}")
        if type(self.resample) is not int or self.resample not in RESAMPLE_FILTERS:
            raise DlforgeError(f"resample={self.resample!r} is not a PIL filter code: use one of "
                               + ", ".join(f"{code} ({name})" for code, name in RESAMPLE_FILTERS.items()))
        if not isinstance(self.rescale_factor, (int, float)) or not 0 < self.rescale_factor < math.inf:
            raise DlforgeError(f"rescale_factor must be a number > 0, got {self.rescale_factor!r}")
        if self.image_processor_type == CONVNEXT:
            if self.crop_pct is None:
                self.crop_pct = PROCESSOR_DEFAULTS[CONVNEXT].crop_pct
            if set(self.size) != {"shortest_edge"}:
                raise DlforgeError(f"{CONVNEXT} resizes by size={{'shortest_edge': N}}, got size={self.size}")
            if not isinstance(self.crop_pct, (int, float)) or not 0 < self.crop_pct <= 1:
                raise DlforgeError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        elif self.crop_pct is not None:
            raise DlforgeError(f"crop_pct is a {CONVNEXT} setting, not one of {self.image_processor_type}")

    # ---- building
    @classmethod
    def from_config(cls, config) -> ImageProcessor:
        """From a vision model's config: image_size, channels, image_mean / image_std and its `preprocessing`
        settings (None: dlforge's own processing at image_size)."""
        settings = getattr(config, "preprocessing", None) or {}
        if not isinstance(settings, dict):
            raise DlforgeError(f"preprocessing={settings!r} must be a dict of image-processor settings (or None)")
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise DlforgeError(f"unknown preprocessing settings {', '.join(unknown)} in the model config: the config "
                               f"is damaged or was edited (known: {', '.join(SETTINGS)})")
        return cls(config.image_size, config.channels, getattr(config, "image_mean", None),
                   getattr(config, "image_std", None), **settings)

    @classmethod
    def from_preprocessor_config(cls, raw: dict, image_size: int, channels: int,
                                 default_type: str = "ViTImageProcessor") -> ImageProcessor:
        """A checkpoint's preprocessor_config.json as transformers reads it: missing (or null) keys take the
        defaults of its image_processor_type (or feature_extractor_type; neither: `default_type`, the model
        family's processor). do_normalize false is mean 0, std 1; one mean/std value shared by all channels is
        kept once per channel of the model."""
        name = raw.get("image_processor_type") or raw.get("feature_extractor_type") or default_type
        kind_name = canonical_processor_type(name)
        kind = PROCESSOR_DEFAULTS[kind_name]

        def get(key, default):
            return default if raw.get(key) is None else raw[key]

        do_center_crop = get("do_center_crop", kind.do_center_crop)
        crop_size = get("crop_size", kind.crop_size)
        if do_center_crop is True and crop_size is None:
            raise DlforgeError(f"{PREPROCESSOR_FILE} sets do_center_crop but no crop_size: add crop_size")
        if get("do_normalize", True):
            mean, std = get("image_mean", kind.image_mean), get("image_std", kind.image_std)
        else:
            mean, std = [0.0], [1.0]
        return cls(image_size, channels, _per_channel(mean, channels, "image_mean"),
                   _per_channel(std, channels, "image_std"), image_processor_type=kind_name,
                   do_resize=get("do_resize", True), size=size_dict(get("size", kind.size), kind.square_int_size,
                                                                    "size"),
                   resample=get("resample", kind.resample),
                   crop_pct=get("crop_pct", kind.crop_pct) if kind_name == CONVNEXT else None,
                   do_center_crop=do_center_crop,
                   crop_size=None if crop_size is None else size_dict(crop_size, True, "crop_size"),
                   do_rescale=get("do_rescale", True), rescale_factor=get("rescale_factor", 1 / 255))

    def settings(self) -> dict:
        """The resize / crop / rescale settings (a model config's `preprocessing`); mean and std are the
        config's own image_mean / image_std."""
        return {name: getattr(self, name) for name in SETTINGS}

    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every processed image, or None when it depends on the image's aspect ratio."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if not self.do_resize:
            return None
        if self.image_processor_type == CONVNEXT:
            return self.size["shortest_edge"], self.size["shortest_edge"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        return None

    # ---- processing
    def _to_uint8(self, image) -> torch.Tensor:
        """One input -> (C, H, W) uint8 at the model's channels, before resizing."""
        mode = {1: "L", 3: "RGB"}.get(self.channels)
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise DlforgeError(f"image {path} does not exist")
            return self._in_channels(_picture_tensor(_open_picture(path, None, mode)))
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            return self._in_channels(_picture_tensor(picture_in_mode(image, mode) if mode else image))
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
            return self._in_channels(image)
        raise DlforgeError(f"cannot read an image from a {type(image).__name__}: give a file path, a PIL image, "
                           "a uint8 tensor (C, H, W) or a numpy array")

    def _in_channels(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 at the model's channels: gray repeated to RGB, others through PIL's conversion."""
        found = image.shape[0]
        if found == self.channels:
            return image
        if found == 1 and self.channels == 3:
            return image.expand(3, -1, -1).contiguous()  # what PIL's L -> RGB does, without the round trip
        if found not in (1, 3, 4) or self.channels not in (1, 3):
            raise DlforgeError(f"cannot convert {found}-channel images to {self.channels} channels")
        from PIL import Image

        array = image.permute(1, 2, 0).numpy()
        picture = Image.fromarray(array[:, :, 0] if found == 1 else np.ascontiguousarray(array))
        return _picture_tensor(picture_in_mode(picture, {1: "L", 3: "RGB"}[self.channels]))

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 -> resized (and for ConvNeXt's rule cropped) as `size` and `resample` say."""
        height, width = image.shape[-2:]
        if self.image_processor_type == CONVNEXT:
            edge = self.size["shortest_edge"]
            if edge >= CONVNEXT_WARP_EDGE:
                return resize_planes(image, edge, edge, self.resample)
            scaled = shortest_edge_shape(height, width, int(edge / self.crop_pct))
            return centre_crop(resize_planes(image, *scaled, self.resample), edge, edge)
        if "height" in self.size:
            target = (self.size["height"], self.size["width"])
        elif "longest_edge" in self.size:
            target = capped_shape(height, width, self.size["shortest_edge"], self.size["longest_edge"])
        else:
            target = shortest_edge_shape(height, width, self.size["shortest_edge"])
        return resize_planes(image, *target, self.resample)

    def fit(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 at the model's channels -> resized and centre-cropped as the settings say."""
        if self.do_resize:
            image = self.resize(image)
        if self.do_center_crop:
            image = centre_crop(image, self.crop_size["height"], self.crop_size["width"])
        return image

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 after `fit` -> float32, rescaled and normalised as the weights expect (float64
        rescaling then float32, as transformers computes it)."""
        x = (images.double() * self.rescale_factor if self.do_rescale else images.double()).float()
        if self.image_mean is None:
            mean, std = [0.5], [0.5]  # [0, 1] -> [-1, 1]
        else:
            mean, std = self.image_mean, self.image_std
        return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images) -> torch.Tensor:
        """Images (see the module docstring) -> (N, C, height, width) float32."""
        if torch.is_tensor(images) and images.dim() == 4:
            if images.dtype != torch.uint8:
                raise DlforgeError("image tensors must be uint8 (0..255); scale float images to 0..255 first")
            fitted = [self.fit(self._in_channels(image)) for image in images]
        else:
            items = images if isinstance(images, (list, tuple)) else [images]
            if not items:
                raise DlforgeError("no images given")
            fitted = [self.fit(self._to_uint8(item)) for item in items]
        shapes = {tuple(image.shape) for image in fitted}
        if len(shapes) > 1:
            raise DlforgeError(f"these images come out at different sizes ({', '.join(map(str, sorted(shapes)))}) "
                               "under this processor's size; process them one at a time")
        return self.normalize(torch.stack(fitted))

    # ---- files (Hugging Face's preprocessor_config.json)
    def hf_config(self) -> dict:
        """The preprocessor_config.json transformers reads back to this processing (do_convert_rgb for RGB models:
        dlforge converts every image to the model's channels)."""
        mean = self.image_mean if self.image_mean is not None else [0.5] * self.channels
        std = self.image_std if self.image_std is not None else [0.5] * self.channels
        raw = {**self.settings(), "do_normalize": True, "image_mean": list(mean), "image_std": list(std),
               "do_convert_rgb": self.channels == 3}
        if raw["crop_pct"] is None:
            del raw["crop_pct"]
        return raw

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSOR_FILE
        atomic_write_json(path, self.hf_config())
        return path


SETTINGS = tuple(f.name for f in fields(ImageProcessor) if f.name not in ("image_size", "channels", "image_mean",
                                                                          "image_std"))


def _per_channel(values, channels: int, name: str) -> list[float]:
    """A preprocessor config's mean or std as the model's list: a single number, or the same value for every
    channel (RGB defaults on a gray model), is kept once per channel."""
    values = [values] if isinstance(values, (int, float)) else values
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, (int, float)) for v in values):
        raise DlforgeError(f"{PREPROCESSOR_FILE} has {name}={values!r}: give numbers, one per channel")
    values = [float(v) for v in values]
    return values[:1] * channels if len(set(values)) == 1 else values
