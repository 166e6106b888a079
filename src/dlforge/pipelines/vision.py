"""Vision pipelines: image classification and image feature extraction with a ViT or ResNet, as Hugging Face's.

    clf = dlforge.pipeline("image-classification", model="runs/mnist-vit/model")
    clf("seven.png", top_k=3)           # [{"label": "7", "score": 0.98}, ...]
    clf(["a.png", pil_image, "folder/"])  # one list per image; a folder stands for its image files (sorted)

    fx = dlforge.pipeline("image-feature-extraction", model="runs/resnet/model")
    fx("a.png")                          # Hugging Face's last_hidden_state: ViT [1, 1 + patches, hidden],
                                         # ResNet [1, channels, height, width] (the last feature map)
    fx("a.png", pool=True)               # Hugging Face's pooler_output: ViT [1, hidden] (its pooler when the
                                         # checkpoint has one, else the vector its head reads), ResNet [1, C, 1, 1]

Images (paths, PIL images, uint8 tensors or arrays) are converted to the model's channels and size and normalised
as its weights expect (`dlforge.data.processor.ImageProcessor`). Keywords: image-classification top_k (default
5, at most the number of labels; None: all), function_to_apply (as text-classification's), timeout (accepted:
dlforge reads local files only); image-feature-extraction pool, return_tensors (a tensor instead of lists).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.processor import ImageProcessor, expand_image_paths
from ..errors import DlforgeError
from ..models import load_pretrained
from .base import Pipeline, is_model_path
from .text_classification import function_name, label_names, ranked_labels, score

VISION_KINDS = ("vit", "resnet")


class ImagePipeline(Pipeline):
    """Loads a vision model once; `__call__` takes one image or a list (folders expand to their images)."""

    def _load(self, model, processor):
        if is_model_path(model):
            model, _ = load_pretrained(model)
        if model.kind not in VISION_KINDS:
            raise DlforgeError(f"{self.task_name} needs a ViT or ResNet model, but this one is a {model.kind} model")
        # a processor may come as tokenizer=, as Hugging Face's image pipelines take it
        return model, processor if isinstance(processor, ImageProcessor) else ImageProcessor.from_config(model.config)

    @property
    def processor(self) -> ImageProcessor:
        return self.tokenizer

    def __call__(self, inputs, **options):
        folder = isinstance(inputs, (str, Path)) and Path(inputs).is_dir()
        if folder or isinstance(inputs, (list, tuple)):
            inputs = expand_image_paths(inputs)  # a folder is a list of its images
        return super().__call__(inputs, **options)

    def preprocess(self, image, timeout=None):
        return self.processor([image])[0]  # (C, H, W)

    def _forward(self, images, **options):
        with torch.no_grad():  # (B, ...) -> B × (...)
            return list(self._run(self._on_device(torch.stack(images)), **options).float().cpu())

    def _run(self, pixels: torch.Tensor, **options) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} defines no _run")  # abstract


class ImageClassification(ImagePipeline):
    task_name = "image-classification"

    def _check_model(self) -> None:
        if self.model.head is None:
            raise DlforgeError("image-classification needs a model with a classification head, but this one is a "
                               "bare backbone: fine-tune one with `dlforge finetune --task image-classification`")

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None):
        post = {} if top_k is None else {"top_k": top_k}
        if function_to_apply is not None:
            post["function_to_apply"] = function_name(function_to_apply)
        return ({} if timeout is None else {"timeout": timeout}), {}, post

    def _run(self, pixels):
        return self.model(pixels).logits  # (B, num_labels)

    def postprocess(self, logits, top_k=5, function_to_apply=None):
        if function_to_apply is None:
            function_to_apply = "sigmoid" if logits.size(-1) == 1 else "softmax"
        names = label_names(self.model.config, logits.size(-1))
        return ranked_labels(score(logits, function_to_apply), names,
                             None if top_k is None else min(top_k, len(names)))


class ImageFeatureExtraction(ImagePipeline):
    task_name = "image-feature-extraction"

    def _sanitize_parameters(self, pool=None, return_tensors=None, timeout=None):
        forward = {} if pool is None else {"pool": bool(pool)}
        post = {} if return_tensors is None else {"return_tensors": bool(return_tensors)}
        return ({} if timeout is None else {"timeout": timeout}), forward, post

    def _run(self, pixels, pool=False):
        model = self.model
        if model.kind == "resnet":  # Hugging Face's ResNetModel: the last feature map, or it average-pooled
            return model.features(pixels)[..., None, None] if pool else model.feature_map(pixels)
        if not pool:
            return model.encode(pixels)  # (B, 1 + patches, hidden)
        return model.pool(pixels) if model.pooler is not None else model.features(pixels)  # (B, hidden)

    def postprocess(self, features, return_tensors=False):
        return features[None] if return_tensors else [features.tolist()]
