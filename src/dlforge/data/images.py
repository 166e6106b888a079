"""Image data for the generative and vision models: loading, batching, and writing pictures.

Sources (`load_image_set`):
- MNIST-style IDX files in a folder (`train-images-idx3-ubyte[.gz]`, `t10k-...`), as LeCun distributes them;
- a folder of PNG/JPEG/... images: one sub-folder per class (the sub-folder name is the label), or images
  directly in the folder (unlabelled); a `train/` + `test/` layout picks the split. Any size: each image is
  resized and centre-cropped to the model's resolution, kept grayscale when every image is;
- `sklearn-digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images; the first 1,500 are "train").

Images are kept in memory as uint8 (N, C, H, W) and scaled to [-1, 1] per batch. `ImageBatches` is the Trainer's
batch source: batches are a function of the step (epoch-wise shuffles from the seed), so a resumed run sees the
same batches. `save_grid` / `write_image` write PNGs atomically.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DlforgeError
from ..io import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SKLEARN_DIGITS = "sklearn-digits"
FOLDER_IMAGE_SIZE = 64  # an image folder whose images differ in size is resized to this by default
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
              0x0E: np.dtype(">f8")}


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None for unlabelled images
    classes: list[str] | None  # label index -> name
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


# ------------------------------------------------------------------------------------------- reading
def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape and type."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DlforgeError(f"cannot read {path} ({e}): the IDX file is damaged; download it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DlforgeError(f"{path} is not an IDX file (bad magic number): give MNIST-format files")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape) * dtype.itemsize:
        raise DlforgeError(f"{path} is truncated: its header declares shape {shape} but the data has "
                           f"{len(raw) - offset} bytes; download it again")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_mnist_folder(path: Path) -> bool:
    return path.is_dir() and _find_idx(path, MNIST_FILES["train"][0]) is not None


def load_mnist(folder: str | Path, split: str = "train") -> ImageSet:
    folder = Path(folder)
    image_stem, label_stem = MNIST_FILES[split]
    image_file, label_file = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    if image_file is None or label_file is None:
        raise DlforgeError(f"{folder} has no {image_stem}[.gz] / {label_stem}[.gz]: the MNIST {split} split is missing")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DlforgeError(f"{image_file} and {label_file} do not match: expected (N, H, W) images and N labels, "
                           f"got {images.shape} and {labels.shape}")
    classes = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    classes, str(folder))


def load_sklearn_digits(split: str = "train") -> ImageSet:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DlforgeError("sklearn-digits needs scikit-learn: pip install 'dlforge[eval]'") from None
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    part = slice(0, 1500) if split == "train" else slice(1500, None)
    return ImageSet(torch.from_numpy(images[part]).unsqueeze(1), torch.from_numpy(digits.target[part].astype(np.int64)),
                    [str(i) for i in range(10)], SKLEARN_DIGITS)


def _open_picture(path: Path, size: int | None, mode: str | None):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            picture = img
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DlforgeError(f"cannot read image {path} ({type(e).__name__}): remove or replace the file") from e
    if mode is None:
        mode = "L" if picture.mode in ("1", "L", "LA", "I;16", "I") else "RGB"
    picture = picture_in_mode(picture, mode)
    if size is not None and picture.size != (size, size):
        # shorter side to `size`, then the centre square: no stretching
        picture = ImageOps.fit(picture, (size, size), method=Image.Resampling.BICUBIC)
    return picture


def picture_in_mode(picture, mode: str):
    """A PIL image in `mode` ("L" or "RGB"); transparency is laid over a white background first, as Hugging Face's
    image processors do (`convert_to_rgb`), rather than dropped."""
    from PIL import Image

    if "A" in picture.getbands() or picture.info.get("transparency") is not None:
        picture = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", picture.size, (255, 255, 255, 255)), picture)
    return picture.convert(mode)


def _picture_tensor(picture) -> torch.Tensor:
    array = np.asarray(picture, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W) uint8


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(folder: str | Path, image_size: int | None = None, channels: int | None = None) -> ImageSet:
    """Images of `folder` (one sub-folder per class, or unlabelled files) resized and cropped to image_size
    (default: the images' own size when they all share one, the centre square of it when not square; else
    FOLDER_IMAGE_SIZE)."""
    folder = Path(folder)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled = [(d.name, _image_files(d)) for d in class_dirs]
    labelled = [(name, files) for name, files in labelled if files]
    if labelled:
        classes = [name for name, _ in labelled]
        files = [(f, i) for i, (_, group) in enumerate(labelled) for f in group]
    else:
        classes, files = None, [(f, 0) for f in _image_files(folder)]
    if not files:
        raise DlforgeError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES[:3])}, ...): put the images in it, "
                           "one sub-folder per class")
    mode = {1: "L", 3: "RGB", None: None}.get(channels, "unsupported")
    if mode == "unsupported":
        raise DlforgeError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if mode is None or image_size is None:  # from the files' headers: no pixels decoded
        from PIL import Image

        modes, sizes = set(), set()
        for path, _ in files:
            try:
                with Image.open(path) as img:
                    modes.add(img.mode)
                    sizes.add(img.size)
            except Exception as e:
                raise DlforgeError(f"cannot read image {path} ({type(e).__name__}): remove or replace the file") from e
        if mode is None:  # grayscale only when every image is
            mode = "L" if modes <= {"1", "L", "LA", "I;16", "I"} else "RGB"
        if image_size is None:  # a folder of 28x28 digits trains at 28x28, not at a costlier upscaled size
            image_size = min(next(iter(sizes))) if len(sizes) == 1 else FOLDER_IMAGE_SIZE
    images = torch.stack([_picture_tensor(_open_picture(path, image_size, mode)) for path, _ in files])
    labels = torch.tensor([label for _, label in files], dtype=torch.int64) if classes else None
    return ImageSet(images, labels, classes, str(folder))


def load_image_set(path: str | Path, split: str = "train", image_size: int | None = None,
                   channels: int | None = None) -> ImageSet:
    """MNIST IDX folder, image folder or `sklearn-digits` -> ImageSet at `image_size` (default: the data's own
    size for MNIST and digits and for image folders whose images share one; else FOLDER_IMAGE_SIZE)."""
    if split not in ("train", "test"):
        raise DlforgeError(f"split must be 'train' or 'test', got {split!r}")
    if str(path) == SKLEARN_DIGITS:
        data = load_sklearn_digits(split)
    else:
        path = Path(path)
        if not path.exists():
            raise DlforgeError(f"{path} does not exist: give an MNIST IDX folder, a folder of images, or "
                               f"{SKLEARN_DIGITS}")
        if not path.is_dir():
            raise DlforgeError(f"{path} is a file: give the folder that holds the images (or the MNIST IDX files)")
        if is_mnist_folder(path):
            data = load_mnist(path, split)
        else:
            folder = path / split if (path / "train").is_dir() else path
            if split == "test" and folder == path:
                raise DlforgeError(f"{path} has no test/ sub-folder: put held-out images in {path / 'test'}")
            return load_image_folder(folder, image_size, channels)
    return resize_image_set(data, image_size, channels)


def select_classes(data: ImageSet, names: str | None, relabel: bool = False) -> ImageSet:
    """The images of the comma-separated classes `names` (all images when None). They keep their class ids,
    or with `relabel` become a set of just those classes (ids 0..k-1 in the order given)."""
    if names is None:
        return data
    if data.labels is None:
        raise DlforgeError(f"only_classes needs labelled images, but {data.source} has no classes")
    wanted = [name.strip() for name in str(names).split(",") if name.strip()]
    unknown = [name for name in wanted if name not in data.classes]
    if unknown:
        raise DlforgeError(f"unknown class {', '.join(unknown)}: {data.source} has {', '.join(data.classes)}")
    ids = torch.tensor([data.classes.index(name) for name in wanted])
    keep = torch.isin(data.labels, ids)
    if not relabel:
        return ImageSet(data.images[keep], data.labels[keep], data.classes, data.source)
    new_id = torch.full((len(data.classes),), -1, dtype=torch.long)
    new_id[ids] = torch.arange(len(ids))
    return ImageSet(data.images[keep], new_id[data.labels[keep]], wanted, data.source)


def few_per_class(data: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """At most `per_class` images of each class, drawn with `seed` (few-label experiments); order kept."""
    if data.labels is None:
        raise DlforgeError(f"per_class needs labelled images, but {data.source} has no classes")
    if per_class < 1:
        raise DlforgeError(f"per_class must be >= 1, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in data.labels.unique().tolist():
        members = (data.labels == label).nonzero().flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(keep).sort().values
    return ImageSet(data.images[index], data.labels[index], data.classes, data.source)


def resize_image_set(data: ImageSet, image_size: int | None, channels: int | None) -> ImageSet:
    """Match a model's resolution and channels (bilinear with antialiasing; gray <-> RGB)."""
    images = data.images
    if channels is not None and channels != images.shape[1]:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1 and images.shape[1] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise DlforgeError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")
    if image_size is not None and image_size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images, data.labels, data.classes, data.source)


def to_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped)."""
    return images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def load_image(path: str | Path, size: int | None = None, channels: int | None = None) -> torch.Tensor:
    """One image file -> (C, H, W) float in [-1, 1], resized and centre-cropped to `size` when given."""
    path = Path(path)
    if not path.is_file():
        raise DlforgeError(f"image {path} does not exist")
    mode = {1: "L", 3: "RGB"}.get(channels) if channels else None
    return to_signed_unit(_picture_tensor(_open_picture(path, size, mode)))


# ------------------------------------------------------------------------------------------- writing
def _write_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def write_image(image: torch.Tensor, path: str | Path) -> Path:
    """(C, H, W) float in [-1, 1] -> PNG, written atomically."""
    return _write_png(to_uint8(image).permute(1, 2, 0).numpy(), path)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) -> one (C, rows·(H+p)+p, nrow·(W+p)+p) picture, images left to right then top to bottom."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = images.new_full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), -1.0)
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top: top + h, left: left + w] = image
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2,
              scale: int = 1) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid (atomically); `scale` enlarges small images."""
    grid = make_grid(images.detach().float().cpu(), nrow, padding)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return write_image(grid, path)


# ------------------------------------------------------------------------------------------- batches
def augment_images(images: torch.Tensor, generator: torch.Generator, flip: bool = False, crop_padding: int = 0,
                   fill: float | torch.Tensor = -1.0, rotate: float = 0.0, scale: float = 0.0) -> torch.Tensor:
    """Random augmentations of float images (B, C, H, W), each drawn per image from `generator` (a seeded generator
    gives the same batch again): horizontal flips; rotations by up to ±`rotate` degrees and zooms by a factor in
    [1 - scale, 1 + scale] about the centre (bilinear); translations by up to `crop_padding` pixels (pad, crop back
    at a random offset). Uncovered pixels get `fill`, the background: a number, or one value per channel
    (1, C, 1, 1)."""
    if flip:
        flipped = torch.rand(images.shape[0], generator=generator) < 0.5
        images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
    if rotate or scale:
        images = random_affine(images, generator, rotate, scale, fill)
    if crop_padding:
        p, (b, c, h, w) = crop_padding, images.shape
        padded = torch.empty(b, c, h + 2 * p, w + 2 * p, dtype=images.dtype)
        padded[:] = fill  # the border: a number, or per channel
        padded[:, :, p:p + h, p:p + w] = images
        shifts = torch.randint(0, 2 * p + 1, (b, 2), generator=generator)
        images = torch.stack([padded[i, :, dy: dy + h, dx: dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])
    return images


def check_affine_augmentation(rotate, scale) -> None:
    """A one-line error unless rotate is a number of degrees in [0, 180] and scale a zoom fraction in [0, 1)."""
    if not isinstance(rotate, (int, float)) or not 0 <= rotate <= 180:
        raise DlforgeError(f"rotate must be a number of degrees in [0, 180], got {rotate!r}")
    if not isinstance(scale, (int, float)) or not 0 <= scale < 1:
        raise DlforgeError(f"scale must be a fraction in [0, 1), e.g. 0.1 for zooms of 0.9-1.1, got {scale!r}")


def random_affine(images: torch.Tensor, generator: torch.Generator, rotate: float, scale: float,
                  fill: float | torch.Tensor) -> torch.Tensor:
    """Each image (B, C, H, W) rotated by a uniform angle in ±`rotate` degrees and zoomed by a uniform factor in
    [1 - scale, 1 + scale] about its centre; pixels from outside the image get `fill`."""
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotate)
    zoom = 1 + (torch.rand(b, generator=generator) * 2 - 1) * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # the output samples the input at R(-a)/zoom
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)  # (B, H, W, 2)
    # sampled around the background, so that the zeros grid_sample puts outside the image come back as `fill`
    return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class ImageBatches:
    """The Trainer's batch source over an ImageSet.

    A held-out `val_fraction` (chosen by the seed) is the validation split unless `validation` is given. Training
    batches walk through per-epoch shuffles of the rest, so every image is seen once per epoch; batch k of the run
    is a function of (seed, k) alone. Augmentation (`augment_images`): random horizontal flips, rotations by up to
    `rotate` degrees, zooms by up to `scale` and translations by up to `crop_padding` pixels, each drawn per image
    from the same seeded stream.
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int = 0, grad_accum: int = 1,
                 val_fraction: float = 0.05, validation: ImageSet | None = None, flip: bool = False,
                 crop_padding: int = 0, eval_images: int = 2000, input_name: str = "images", rotate: float = 0.0,
                 scale: float = 0.0):
        self.batch_size, self.seed, self.grad_accum = batch_size, seed, grad_accum
        self.input_name = input_name  # the model's forward argument: images, or pixel_values (ViT, ResNet)
        self.flip, self.crop_padding, self.rotate, self.scale = flip, crop_padding, rotate, scale
        if validation is None:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
            n_val = max(1, int(len(data) * val_fraction)) if len(data) > 1 else 0
            val_idx, train_idx = order[:n_val], order[n_val:]
            validation = _subset(data, val_idx)
            data = _subset(data, train_idx)
        if len(data) == 0 or len(validation) == 0:
            raise DlforgeError(f"{data.source} has too few images to hold some out for validation: add images")
        self.train, self.validation = data, validation
        self.n_eval = min(len(validation), eval_images)

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None

    def _indices(self, position: int, count: int) -> torch.Tensor:
        """Indices of images position .. position+count-1 of the endless stream of epoch shuffles."""
        n, out = len(self.train), []
        while count > 0:
            epoch, offset = divmod(position, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            take = min(count, n - offset)
            out.append(order[offset: offset + take])
            position, count = position + take, count - take
        return torch.cat(out)

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_images(images, generator, self.flip, self.crop_padding, fill=-1.0,  # black: -1 in [-1, 1]
                              rotate=self.rotate, scale=self.scale)

    def _batch(self, data: ImageSet, index: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {self.input_name: to_signed_unit(data.images[index])}
        if data.labels is not None:
            batch["labels"] = data.labels[index]
        return batch

    def train_batch(self, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1):
        if self.batch_size % world_size:
            raise DlforgeError(f"batch_size {self.batch_size} is not divisible by the {world_size} processes")
        per_rank = self.batch_size // world_size
        position = ((step * self.grad_accum + micro_step) * self.batch_size) + rank * per_rank
        batch = self._batch(self.train, self._indices(position, per_rank))
        if self.flip or self.crop_padding or self.rotate or self.scale:
            seed = ((self.seed * 1_000_003 + step) * 1009 + micro_step) * 64 + rank
            generator = torch.Generator().manual_seed(seed)
            batch[self.input_name] = self._augment(batch[self.input_name], generator)
        return batch

    def eval_batches(self, rank: int = 0, world_size: int = 1):
        """The first `eval_images` validation images, the same at every evaluation."""
        per_rank = self.batch_size // world_size
        for start in range(0, self.n_eval, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, self.n_eval))
            index = index[rank * per_rank: (rank + 1) * per_rank]
            if len(index):
                yield self._batch(self.validation, index)


def _subset(data: ImageSet, index: torch.Tensor) -> ImageSet:
    return ImageSet(data.images[index], None if data.labels is None else data.labels[index], data.classes,
                    data.source)
