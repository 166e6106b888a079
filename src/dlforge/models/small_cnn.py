"""ImageClassifier: a small VGG-style CNN for MNIST-sized images, and dlforge's evaluation classifier.

    [conv3×3 w, BN, ReLU] ×2 → max-pool ½ → [conv3×3 2w, BN, ReLU] ×2 → max-pool ½
    → adaptive average pool to 4×4 → flatten (2w·16) → linear h, ReLU  = features (B, h)
    → dropout → linear K = logits

With w = 32, h = 128 it has about 0.2 M parameters and is the usual ≥ 99 % MNIST network. The adaptive pool
makes the head independent of the input side (28, 32, 64; even 8×8 works: 2×2 maps are spread to 4×4).
Besides classifying, it is what dlforge scores generated images with (dlforge.metrics.image_generation):
conditional accuracy (does G(z, y) look like class y?) and a Fréchet distance between the `features` of real
and generated images. Weights use PyTorch's default (Kaiming-uniform) initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel


@dataclass
class ImageClassifierConfig(ModelConfig):
    image_size: int = 28
    channels: int = 1
    num_classes: int = 10
    width: int = 32  # channels of the first two convolutions; the next two have 2·width
    hidden: int = 128  # size of the penultimate layer (the features)
    dropout: float = 0.5  # before the last linear layer

    def __post_init__(self):
        check_model_config(self, at_least_one=("image_size", "channels", "num_classes", "width", "hidden"))
        if self.num_classes < 2:
            raise DlforgeError(f"an image classifier needs num_classes >= 2 (labelled data), got {self.num_classes}")
        if self.image_size < 4:
            raise DlforgeError(f"image_size must be >= 4, got {self.image_size}")
        for name in ("channels", "width", "hidden"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"image classifier {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise DlforgeError(f"dropout must be in [0, 1), got {self.dropout}")


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ImageClassifier(PretrainedModel):
    kind = "image-classifier"
    config_class = ImageClassifierConfig
    log_names: tuple[str, ...] = ()

    def __init__(self, config: ImageClassifierConfig):
        super().__init__()
        self.config = c = config
        w = c.width
        self.body = nn.Sequential(
            *conv_bn_relu(c.channels, w), *conv_bn_relu(w, w), nn.MaxPool2d(2),
            *conv_bn_relu(w, 2 * w), *conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * w * 16, c.hidden), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.hidden, c.num_classes))

    def _check(self, images):
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise DlforgeError(f"this classifier takes images of shape (B, {c.channels}, {c.image_size}, "
                               f"{c.image_size}), got {tuple(images.shape)}")

    def features(self, images) -> torch.Tensor:
        """Penultimate activations (B, hidden) of images (B, C, H, W) in [-1, 1]."""
        self._check(images)
        return self.body(images)

    def forward(self, images, labels=None) -> ModelOutput:
        """images: (B, C, H, W) in [-1, 1]; labels: (B,) class ids or None. Logits (B, K); loss = cross-entropy."""
        logits = self.head(self.features(images))  # (B, K)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits, logs={})

    @torch.no_grad()
    def predict(self, images) -> torch.Tensor:
        """Predicted class ids (B,)."""
        return self(images).logits.argmax(dim=-1)

    @torch.no_grad()
    def preview(self, images, labels, seed: int) -> torch.Tensor:
        """A classifier makes no images: the preview is (up to 64 of) the input images themselves, unchanged
        (deterministic; `seed` is unused)."""
        return images[:64].float().clamp(-1.0, 1.0)
