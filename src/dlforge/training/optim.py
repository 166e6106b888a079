"""Optimizer, learning-rate schedule and weight EMA used by the Trainer.

- AdamW (Loshchilov & Hutter, 2019) with weight decay only on matrices and embeddings (≥2-D);
  biases and norm gains are not decayed; optional per-parameter learning-rate multipliers.
- Learning rate: linear warmup to `lr` over `warmup_steps`, then cosine decay to `min_lr` at
  `total_steps` (lr_t = min_lr + ½(lr - min_lr)(1 + cos(π·progress))), or constant.
- EMA of weights: θ_ema ← d·θ_ema + (1 - d)·θ after every optimizer step.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
               lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over every parameter (frozen ones are skipped while their grad is None, so layers
    unfrozen later train without rebuilding the optimizer). `lr_scales` maps parameter names to
    learning-rate multipliers (layer-wise decay); each group keeps its multiplier as `lr_scale`."""
    groups: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():
        key = (param.dim() >= 2, (lr_scales or {}).get(name, 1.0))
        groups.setdefault(key, []).append(param)
    param_groups = [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
                    for (decay, scale), params in groups.items()]
    # the fused kernel (one pass over all parameters) is much faster than the per-tensor loop
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=True)


def learning_rate(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                  decay: str = "cosine") -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant" or total_steps <= warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in self._averaged(model).items()}

    @staticmethod
    def _averaged(model: nn.Module) -> dict[str, torch.Tensor]:
        """Floating-point tensors of the state dict, each storage once (tied weights share one)."""
        out, seen = {}, set()
        for k, v in model.state_dict().items():
            if v.is_floating_point() and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                out[k] = v
        return out

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in self._averaged(model).items():
            self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights with the averaged ones (call twice to swap back)."""
        for k, current in self._averaged(model).items():
            saved = current.detach().clone()
            current.copy_(self.shadow[k])
            self.shadow[k].copy_(saved)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
