"""Knowledge distillation: a student learns from a frozen teacher as well as from the labels.

`Distiller` (Hinton et al., 2015) teaches the teacher's soft targets:

    L = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)

The T² factor keeps the soft-target gradients on the scale of the hard-label ones.

`FeatureMapDistiller` teaches a Vision Transformer a convolutional teacher's last feature map ("hints", Romero et
al., 2015): a linear projection P of each patch token h_i (the final-LayerNorm output) regresses the teacher's
feature vector f_i at that place of the image (the map average-pooled to the ViT's patch grid when their sizes
differ, each vector layer-normalised so that the target has a fixed scale):

    L = CE(z_s, y) + β · mean_i ‖P h_i − LN(f_i)‖² / C

A ViT lacks a CNN's built-in locality; trained from a few thousand images of a few classes it learns features
that serve those classes and little else. Regressing a CNN's local features hands it that prior (as DeiT's
convolutional teacher does through soft labels), and the patch tokens then transfer to new classes (a ViT
pretrained this way on MNIST digits 0-4 learns digits 5-9 from 10 labels each far better: benchmarks/RESULTS.md
§19). P exists only for training: the exported model is the plain ViT.

Both wrap (student, teacher) as one model whose forward(**batch) returns that loss, so the ordinary Trainer trains
the student; the teacher stays frozen in eval mode, outside the parameters, the state dict and the checkpoints.
In eval mode (validation) both return the student's own output and loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from ..models.outputs import ModelOutput
from .wrapper import TrainingWrapper


def distillation_loss(student_logits, teacher_logits, labels=None, temperature: float = 2.0,
                      alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """Logits (..., C); labels (...) or None (then the soft term alone)."""
    s = student_logits.float().flatten(0, -2)  # (N, C)
    t = teacher_logits.float().flatten(0, -2)
    keep = torch.ones(s.size(0), dtype=torch.bool, device=s.device)
    if labels is not None:
        keep = labels.flatten() != ignore_index
    soft = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1),
                    log_target=True, reduction="batchmean") * temperature**2
    if labels is None:
        return soft
    hard = F.cross_entropy(s, labels.flatten(), ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard


class TeacherWrapper(TrainingWrapper):
    """Student + frozen teacher; `state_dict`/checkpoints hold the student only."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__(student)
        teacher.eval().requires_grad_(False)
        self._teacher = [teacher]  # a list keeps it out of parameters(), state_dict() and .to()

    @property
    def student(self) -> nn.Module:
        return self.model

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() move the hidden teacher too
        super()._apply(fn, *args, **kwargs)
        self._teacher[0]._apply(fn, *args, **kwargs)
        return self


class Distiller(TeacherWrapper):
    """Soft-target distillation (see the module docstring)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__(student, teacher)
        self.temperature, self.alpha = temperature, alpha

    def forward(self, labels=None, **inputs) -> ModelOutput:
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        logits = self.student(**inputs).logits
        loss = distillation_loss(logits, teacher_logits, labels, self.temperature, self.alpha)
        return ModelOutput(loss=loss, logits=logits)


def feature_map_targets(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A teacher's feature map (B, C, h, w) -> one layer-normalised vector per student patch (B, rows·cols, C)."""
    feature_map = feature_map.float()
    if tuple(feature_map.shape[-2:]) != grid:
        feature_map = F.adaptive_avg_pool2d(feature_map, grid)
    targets = feature_map.flatten(2).transpose(1, 2)  # (B, N, C), patches in row-major order as the ViT's
    return F.layer_norm(targets, targets.shape[-1:])


class FeatureMapDistiller(TeacherWrapper):
    """A ViT student regresses a CNN teacher's last feature map with its patch tokens (see the module docstring).

    student: a model with `encode(pixel_values)` -> (B, 1 + N, D) hidden states ([CLS] first), `pool_hidden`,
    `classify` and `config.patch_size` / `config.hidden_size` (dlforge's ViT); teacher: a model with
    `feature_map(pixel_values)` -> (B, C, h, w) (dlforge's ResNet), taking the same images."""

    log_names = ("class_loss", "hint_loss")

    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float = 1.0):
        missing = [name for name in ("encode", "pool_hidden", "classify") if not hasattr(student, name)]
        if missing or getattr(student, "head", None) is None:
            raise DlforgeError(f"a {type(student).__name__} cannot learn a teacher's feature map: the student must "
                               "be a ViT classifier (patch tokens and a classification head)")
        if not hasattr(teacher, "feature_map"):
            raise DlforgeError(f"a {type(teacher).__name__} teacher has no feature map: use a convolutional "
                               "network (e.g. a `dlforge train resnet` run) as the teacher")
        if student.config.channels != teacher.config.channels:
            raise DlforgeError(f"the student takes {student.config.channels}-channel images, the teacher "
                               f"{teacher.config.channels}-channel ones: train both on the same images")
        if weight < 0:
            raise DlforgeError(f"the feature-map weight must be >= 0, got {weight}")
        super().__init__(student, teacher)
        self.weight = weight
        self.projection = nn.Linear(student.config.hidden_size, teacher.feature_dim)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        if not self.training:
            return self.student(pixel_values, labels)
        if labels is None:
            raise DlforgeError("FeatureMapDistiller trains on labelled images: give labels")
        hidden = self.student.encode(pixel_values)  # (B, 1 + N, D)
        output = self.student.classify(self.student.pool_hidden(hidden), labels)
        patch = self.student.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        with torch.no_grad():
            targets = feature_map_targets(self.teacher.feature_map(pixel_values), grid)  # (B, N, C)
        predicted = self.projection(hidden[:, 1:].float())  # (B, N, C)
        hint_loss = F.mse_loss(predicted, targets)
        return ModelOutput(loss=output.loss + self.weight * hint_loss, logits=output.logits,
                           logs={"class_loss": output.loss.detach(), "hint_loss": hint_loss.detach()})
