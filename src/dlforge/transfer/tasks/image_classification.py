"""Image classification for `dlforge finetune`: a pretrained ViT or ResNet adapted to the user's labelled images.

Sources (--train / --eval): an MNIST-style IDX folder, a folder of images with one sub-folder per class (a
`train/` + `test/` layout picks the split), or `sklearn-digits`. When --train and --eval name the same source
that has splits, training reads its train split and evaluation its test split. Task options:
- `classes`: keep only these classes, comma-separated names (e.g. --option classes=5,6,7,8,9);
- `per_class`: keep at most this many training images per class, drawn with `sample_seed` (few-label
  experiments; evaluation always uses every image);
- `load_size`: the side image folders are read at before the model's own resizing (default 256);
- `crop_padding` / `flip` / `rotate` / `scale`: augment each training batch with random translations by up to that
  many pixels (the background fills in), random horizontal flips (not for digits), rotations by up to ±`rotate`
  degrees and zooms by up to ±`scale` (e.g. 0.1: factors 0.9–1.1).
Images are converted to the model's channels and size and normalised as its weights expect
(`ImageProcessor.from_config`), once, before training.

Evaluation: accuracy, macro-F1, per-class precision/recall/F1 and OUT/confusion_matrix.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data.images import (
    SKLEARN_DIGITS,
    augment_images,
    check_affine_augmentation,
    few_per_class,
    is_mnist_folder,
    load_image_set,
    select_classes,
)
from ...data.processor import ImageProcessor
from ...errors import DlforgeError
from ...models import load_pretrained
from .base import FinetuneTask, accuracy_batch_score, check_labels_known, classification_report, label_ids, sort_labels

VISION_KINDS = ("vit", "resnet")


class ImageClassificationTask(FinetuneTask):
    name = "image-classification"
    model_task = "image-classification"
    file_kind = f"an MNIST IDX folder, a folder of images (one sub-folder per class) or {SKLEARN_DIGITS}"
    selection_metric = "accuracy"

    def __init__(self, classes: str | int | None = None, per_class: int | None = None, sample_seed: int = 0,
                 load_size: int = 256, crop_padding: int = 0, flip: bool = False, rotate: float = 0.0,
                 scale: float = 0.0):
        self.classes = None if classes is None else str(classes)
        if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
            raise DlforgeError(f"per_class must be a whole number >= 1, got {per_class!r}")
        if not isinstance(load_size, int) or load_size < 8:
            raise DlforgeError(f"load_size must be a whole number >= 8, got {load_size!r}")
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise DlforgeError(f"crop_padding must be a whole number >= 0, got {crop_padding!r}")
        self.per_class, self.sample_seed, self.load_size = per_class, sample_seed, load_size
        check_affine_augmentation(rotate, scale)
        self.crop_padding, self.flip, self.rotate, self.scale = crop_padding, bool(flip), float(rotate), float(scale)
        self._paths: dict[str, str] = {}

    def batch_score(self, output, batch: dict, labels: list[str] | None = None) -> tuple[float, float]:
        return accuracy_batch_score(output, batch)

    # ---- reading
    def check_source(self, path, role: str):
        if str(path) == SKLEARN_DIGITS:
            return SKLEARN_DIGITS
        path = Path(path)
        if not path.is_dir():
            what = "is a file" if path.is_file() else "does not exist"
            raise DlforgeError(f"{role} source {path} {what}: give {self.file_kind}")
        return path

    def _split(self, path, role: str) -> str:
        """train for --train; for --eval, the test split when the source has one (else its images)."""
        if role == "training":
            return "train"
        has_splits = (str(path) == SKLEARN_DIGITS or is_mnist_folder(Path(path))
                      or (Path(path) / "test").is_dir())
        return "test" if has_splits else "train"

    def read_split(self, path, role: str) -> list[dict]:
        """Examples {"image": (C, H, W) uint8, "label": class name}."""
        data = load_image_set(path, self._split(path, role), image_size=None if self._native(path) else self.load_size)
        if data.labels is None:
            raise DlforgeError(f"{path} has no classes: put the images in one sub-folder per class")
        data = select_classes(data, self.classes)
        if role == "training" and self.per_class is not None:
            data = few_per_class(data, self.per_class, self.sample_seed)
        if not len(data):
            raise DlforgeError(f"{path} holds no images of the chosen classes")
        return [{"image": image, "label": data.classes[label]} for image, label in zip(data.images, data.labels)]

    @staticmethod
    def _native(path) -> bool:
        return str(path) == SKLEARN_DIGITS or is_mnist_folder(Path(path))

    def read(self, path: str | Path) -> list[dict]:
        return self.read_split(path, "training")

    def label_names(self, examples: list[dict]) -> list[str]:
        return sort_labels({e["label"] for e in examples})

    # ---- model and inputs
    def load_model(self, path, labels: list[str] | None, seed: int):
        """(ViT or ResNet with a head for `labels`, its ImageProcessor) from a model or run folder, a Hugging Face
        ViT / ResNet folder, or a torchvision/timm ResNet weight file. A head trained for the same label set is
        kept; otherwise a new one starts from `seed`."""
        model, _ = load_pretrained(path)  # a torchvision / timm weight file loads as a ResNet
        if model.kind not in VISION_KINDS:
            raise DlforgeError(f"{path} holds a {model.kind} model; image classification fine-tunes a ViT or "
                               "ResNet (a dlforge run or model folder, or a Hugging Face ViT/ResNet folder)")
        if labels is not None and sorted(model.config.labels or []) != sorted(labels):
            torch.manual_seed(seed)  # a new head starts from the same weights every time
            model.with_head(len(labels), labels)
        return model, ImageProcessor.from_config(model.config)

    def pixel_values(self, examples: list[dict], processor: ImageProcessor, chunk: int = 1024) -> torch.Tensor:
        """(N, C, H, W) float: the examples converted and normalised for the model."""
        return torch.cat([processor(torch.stack([e["image"] for e in examples[i:i + chunk]]))
                          for i in range(0, len(examples), chunk)])

    def features(self, examples: list[dict], tokenizer, labels: list[str] | None, max_length: int) -> list[dict]:
        ids = label_ids(examples, labels)
        pixels = self.pixel_values(examples, tokenizer)  # `tokenizer` is the model's ImageProcessor here
        return [{"pixel_values": x, "labels": torch.tensor(i, dtype=torch.long)} for x, i in zip(pixels, ids)]

    def augmenter(self, tokenizer):
        """Random translations, flips, rotations and zooms of the training images (the options), or None."""
        if not (self.crop_padding or self.flip or self.rotate or self.scale):
            return None
        black = tokenizer.normalize(torch.zeros(1, tokenizer.channels, 1, 1, dtype=torch.uint8))  # (1, C, 1, 1)

        def augment(batch: dict, generator: torch.Generator) -> dict:
            pixels = augment_images(batch["pixel_values"], generator, self.flip, self.crop_padding, fill=black,
                                    rotate=self.rotate, scale=self.scale)
            return {**batch, "pixel_values": pixels}

        return augment

    @torch.no_grad()
    def _batched(self, model, processor, examples: list[dict], batch_size: int, fn, dtype=None) -> torch.Tensor:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        try:
            for start in range(0, len(examples), batch_size):
                x = self.pixel_values(examples[start:start + batch_size], processor).to(device)
                with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    out.append(fn(x).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out)

    def vectors(self, model, tokenizer, examples: list[dict], max_length: int, cache_dir: Path,
                dtype: torch.dtype | None) -> np.ndarray:
        """The frozen backbone's pooled vectors (`model.features`), which the head reads."""
        return self._batched(model, tokenizer, examples, 128, model.features, dtype).numpy()

    def predict(self, model, processor, examples: list[dict], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities (N, num_labels), in the order of `examples`."""
        return self._batched(model, processor, examples, batch_size, lambda x: model(x).logits).softmax(-1)

    def evaluate(self, model, tokenizer, examples: list[dict], out_dir: Path, batch_size: int = 32,
                 max_length: int = 128) -> dict:
        check_labels_known(model, {e["label"] for e in examples})
        processor = tokenizer or ImageProcessor.from_config(model.config)
        predicted = self.predict(model, processor, examples, batch_size).argmax(-1).tolist()
        return classification_report(model, [e["label"] for e in examples], predicted, out_dir)
