"""Optimizer, learning-rate schedule and weight EMA used by the Trainer.

- AdamW (Loshchilov & Hutter, 2019) with weight decay only on matrices and embeddings (≥2-D);
  biases and norm gains are not decayed; optional per-parameter learning-rate multipliers.
- Learning rate: linear warmup to `lr` over `warmup_steps`, then cosine decay to `min_lr` at
  `total_steps` (lr_t = min_lr + ½(lr - min_lr)(1 + cos(π·progress))), or constant, or one-cycle
  (the warmup rises from lr/25, the decay ends at lr/(25·10⁴), and Adam's β1 cycles 0.95 → 0.85 → 0.95).
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


DECAYS = ("cosine", "constant", "one-cycle")
# one-cycle (Smith & Topin, 2018; fastai's fit_one_cycle): the LR rises from lr/25 to lr over the warmup steps
# and anneals to lr/(25·10⁴), both along a cosine; Adam's β1 moves the other way, 0.95 → 0.85 → 0.95
ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV, ONE_CYCLE_BETA1 = 25.0, 1e4, (0.95, 0.85)


def _cosine_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, fraction))))


def learning_rate(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                  decay: str = "cosine") -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if decay == "one-cycle":
        low = lr / ONE_CYCLE_DIV
        if step < warmup_steps:
            return _cosine_between(low, lr, step / warmup_steps)
        fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return _cosine_between(lr, low / ONE_CYCLE_FINAL_DIV, fraction)
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant" or total_steps <= warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def adam_beta1(step: int, beta1: float, warmup_steps: int, total_steps: int, decay: str = "cosine") -> float:
    """Adam's β1 for step `step`: `beta1` itself, except under one-cycle, where it mirrors the learning rate."""
    if decay != "one-cycle":
        return beta1
    high, low = ONE_CYCLE_BETA1
    if step < warmup_steps:
        return _cosine_between(high, low, step / warmup_steps)
    return _cosine_between(low, high, (step - warmup_steps) / max(1, total_steps - warmup_steps))


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
