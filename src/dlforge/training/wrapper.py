"""`TrainingWrapper`: what a training set-up around a task model (a distiller, a head on cached vectors, a
domain-adversarial pair, a feature-map distiller) shares. Its state dict, kind and config are the wrapped model's, so
every checkpoint the Trainer writes of the wrapper loads as the plain task model (`load_pretrained(run)`), under the
model's own names. Modules that exist only for training (a domain classifier, a projection onto a teacher's features)
travel instead in the Trainer's own state (`training_state_dict`), so that `--resume` continues exactly."""

from __future__ import annotations

from torch import nn


class TrainingWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def kind(self):
        return self.model.kind

    @property
    def config(self):
        return self.model.config

    def training_state_dict(self) -> dict[str, dict]:
        """{child name: its state dict} of the training-only modules: every child but the wrapped model."""
        return {name: child.state_dict() for name, child in self.named_children() if name != "model"}

    def load_training_state_dict(self, state: dict[str, dict]) -> None:
        expected = sorted(self.training_state_dict())
        if sorted(state) != expected:
            raise ValueError(f"training-only modules {sorted(state)} in the checkpoint, expected {expected}")
        for name, child in self.named_children():
            if name != "model":
                child.load_state_dict(state[name])
