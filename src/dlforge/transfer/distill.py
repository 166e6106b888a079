"""Knowledge distillation (Hinton et al., 2015): a student learns from a teacher's soft targets.

    L = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)

The T² factor keeps the soft-target gradients on the scale of the hard-label ones.
`Distiller` wraps (student, teacher) as one model whose forward(**batch) returns that loss, so the
ordinary Trainer trains the student; the teacher stays frozen in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


class Distiller(TrainingWrapper):
    """Student + frozen teacher; `state_dict`/checkpoints hold the student only."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__(student)
        self.temperature, self.alpha = temperature, alpha
        teacher.eval().requires_grad_(False)
        self._teacher = [teacher]  # a list keeps it out of parameters(), state_dict() and .to()

    @property
    def student(self) -> nn.Module:
        return self.model

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() move the hidden teacher too
        super()._apply(fn, *args, **kwargs)
        self._teacher[0]._apply(fn, *args, **kwargs)
        return self

    def forward(self, labels=None, **inputs) -> ModelOutput:
        with torch.no_grad():
            teacher_logits = self._teacher[0](**inputs).logits
        logits = self.student(**inputs).logits
        loss = distillation_loss(logits, teacher_logits, labels, self.temperature, self.alpha)
        return ModelOutput(loss=loss, logits=logits)
