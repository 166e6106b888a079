"""Vision pipelines: image classification and image feature extraction with a ViT or ResNet, as Hugging Face's.

    clf = dlforge.pipeline("image-classification", model="runs/mnist-vit/model")
    clf("seven.png", top_k=3)           # [{"label": "7", "score": 0.98}, ...]
    clf(["a.png", pil_image, "folder/"])  # one list per image; a folder stands for its image files (sorted)

    fx = dlforge.pipeline("image-feature-extraction", model="runs/resnet/model")
    fx("a.png")                          # the pooled vector the classification head reads: [hidden] floats
    fx("a.png", pool=False)              # ViT: every token's final hidden state, [1, 1 + patches, hidden]

Images (paths, PIL images, uint8 tensors or arrays) are converted to the model's channels and size and normalised
as its weights expect (`dlforge.data.processor.ImageProcessor`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.processor import ImageProcessor, expand_image_paths
from ..devices import resolve_device
from ..errors import DlforgeError
from ..models import load_pretrained
from .tasks import Pipeline

VISION_KINDS = ("vit", "resnet")


class ImagePipeline(Pipeline):
    """Loads a vision model once; `__call__` takes one image or a list (folders expand to their images)."""

    def __init__(self, model, tokenizer=None, batch_size: int = 32, device=None, **unused):
        if unused:
            raise DlforgeError(f"{self.task_name} has no option {sorted(unused)[0]!r}")
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            model, _ = load_pretrained(model)
        if model.kind not in VISION_KINDS:
            raise DlforgeError(f"{self.task_name} needs a ViT or ResNet model, but this one is a {model.kind} model")
        if device is not None:

            name = ("cpu" if device < 0 else f"cuda:{device}") if isinstance(device, int) else str(device)
            model = model.to(resolve_device(name))
        self.model, self.batch_size = model.eval(), batch_size
        given = tokenizer if isinstance(tokenizer, ImageProcessor) else None  # a processor may come as tokenizer=
        self.processor = given or ImageProcessor.from_config(model.config)
        self._check_model()

    def _check_model(self) -> None:
        return None

    def __call__(self, inputs, **options):
        single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, (str, Path))
                                                                 and Path(inputs).is_dir())
        items = expand_image_paths(inputs)
        results = []
        for start in range(0, len(items), self.batch_size):
            pixels = self.processor(items[start:start + self.batch_size])  # (B, C, H, W)
            results.extend(self._run(*self._on_device(pixels), **options))
        return results[0] if single else results


class ImageClassification(ImagePipeline):
    task_name = "image-classification"

    def _check_model(self) -> None:
        if self.model.head is None:
            raise DlforgeError("image-classification needs a model with a classification head, but this one is a "
                               "bare backbone: fine-tune one with `dlforge finetune --task image-classification`")

    @torch.no_grad()
    def _run(self, pixels, top_k: int | None = 5):
        scores = self.model(pixels).logits.float().softmax(-1).cpu()  # (B, num_labels)
        names = self.model.config.labels or [f"LABEL_{i}" for i in range(scores.size(-1))]
        out = []
        for row in scores.tolist():
            ranked = sorted(zip(names, row), key=lambda p: -p[1])
            out.append([{"label": n, "score": s} for n, s in ranked[:top_k]])
        return out


class ImageFeatureExtraction(ImagePipeline):
    task_name = "image-feature-extraction"

    @torch.no_grad()
    def _run(self, pixels, pool: bool = True):
        if pool:
            return self.model.features(pixels).float().cpu().tolist()  # (B, hidden)
        if not hasattr(self.model, "encode"):
            raise DlforgeError("pool=False returns token states, which only a ViT has; use pool=True")
        return [[states] for states in self.model.encode(pixels).float().cpu().tolist()]  # B × [1, T, hidden]
