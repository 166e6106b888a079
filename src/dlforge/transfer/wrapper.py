"""`TrainingWrapper`: what a training set-up around a task model (a distiller, a head on cached vectors, a
domain-adversarial pair) shares. Its state dict, kind and config are the wrapped model's, so every checkpoint the
Trainer writes of the wrapper loads as the plain task model (`load_pretrained(run)`), under the model's own names."""

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
