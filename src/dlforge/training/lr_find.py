"""Learning-rate range test (Smith, 2017, "Cyclical Learning Rates for Training Neural Networks"; fastai's lr_find).

Train for up to `steps` optimizer steps with the learning rate growing exponentially from min_lr to max_lr,

    lr_i = min_lr · (max_lr / min_lr)^(i / (steps − 1)),

and record the training loss, smoothed by an exponential moving average with Adam's bias correction:

    m_i = β·m_{i−1} + (1 − β)·loss_i,    smoothed_i = m_i / (1 − β^(i+1)).

The test stops once the smoothed loss exceeds `diverge` × its minimum so far (best + (diverge − 1)·|best| for losses
that can be negative), or the loss is not finite. It suggests two learning rates:
- `suggestion`: where the smoothed loss falls fastest, the most negative d smoothed / d log(lr) before its minimum
  (fastai's "steep");
- `min_loss_lr`: the learning rate of the lowest smoothed loss divided by 10 (there the loss is about to blow up).

It runs on the model itself, with the Trainer's AdamW (`make_adamw`), gradient clipping and autocast, on any batch
source of the Trainer (batch i is `train_batch(i, micro, 0, 1)`); afterwards every parameter and buffer (batch-norm
statistics included), the gradients, each module's train/eval mode, the device and the RNG state are put back
exactly, so the model can be trained as if the test had never run. `plot_lr_find` draws the curve.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DlforgeError
from ..io import atomic_save_figure, pyplot
from .optim import make_adamw
from .trainer import PRECISIONS, resolve_device, resolve_precision


@dataclass
class LRFindResult:
    lrs: list[float]  # the learning rate of each recorded step
    losses: list[float]  # smoothed (bias-corrected EMA) loss at each step
    raw_losses: list[float]  # the loss of each step's batch
    suggestion: float | None  # steepest descent of the smoothed loss (None: the loss never fell)
    min_loss_lr: float | None  # learning rate of the lowest smoothed loss / 10
    stopped_early: bool = False  # the loss diverged before the last step

    def to_dict(self) -> dict:
        return asdict(self)


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`steps` learning rates from min_lr to max_lr, evenly spaced in log(lr)."""
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


def steepest_descent_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The learning rate where the loss falls fastest against log(lr), looking only up to the lowest loss."""
    lowest = int(np.argmin(losses)) if losses else 0
    if lowest < 2:  # the loss never fell (or too few points to tell a slope)
        return None
    slopes = np.gradient(np.asarray(losses[:lowest + 1]), np.log(np.asarray(lrs[:lowest + 1])))
    steepest = int(np.argmin(slopes))
    return float(lrs[steepest]) if slopes[steepest] < 0 else None


class ModelSnapshot:
    """Everything `lr_find` changes in a model, copied, to put back bit-exactly: parameters, buffers, gradients,
    per-module train/eval mode, the device, and the global RNG state (dropout draws from it)."""

    def __init__(self, model: nn.Module):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.tensors = {name: t.detach().clone() for name, t in self._named_tensors(model)}
        self.grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.rng_cpu = torch.get_rng_state()
        self.rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []

    @staticmethod
    def _named_tensors(model: nn.Module):
        return itertools.chain(model.named_parameters(), model.named_buffers())

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        model.to(self.device)
        for name, tensor in self._named_tensors(model):
            tensor.copy_(self.tensors[name])
        for name, param in model.named_parameters():
            param.grad = self.grads[name]
        for name, module in model.named_modules():
            module.training = self.modes[name]
        torch.set_rng_state(self.rng_cpu)
        if self.rng_cuda:
            torch.cuda.set_rng_state_all(self.rng_cuda)


def lr_find(model: nn.Module, batches, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100,
            beta: float = 0.98, diverge: float = 4.0, weight_decay: float = 0.1, betas=(0.9, 0.95),
            grad_clip: float | None = 1.0, grad_accum: int = 1, precision: str = "auto", device: str = "auto",
            progress: bool = False) -> LRFindResult:
    """Run the learning-rate range test on `model` (its forward(**batch) returns `.loss`) with the Trainer batch
    source `batches`; the model is left exactly as it was. `weight_decay`, `betas`, `grad_clip`, `grad_accum`,
    `precision` (fp32 | bf16 | fp16 | auto) and `device` mean what they mean in TrainConfig; match them to the
    training the learning rate is for."""
    if not 0 < min_lr < max_lr:
        raise DlforgeError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if steps < 3:
        raise DlforgeError(f"steps must be >= 3, got {steps}")
    if not 0 <= beta < 1:
        raise DlforgeError(f"beta (the loss smoothing) must be in [0, 1), got {beta}")
    if not diverge > 1:
        raise DlforgeError(f"diverge must be > 1 (a multiple of the best loss), got {diverge}")
    if grad_accum < 1:
        raise DlforgeError(f"grad_accum must be >= 1, got {grad_accum}")
    if precision not in PRECISIONS:
        raise DlforgeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = resolve_device(device)
    amp_dtype = resolve_precision(precision, device)

    def autocast():
        if amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    lrs, losses, raw_losses, stopped_early = [], [], [], False
    snapshot = ModelSnapshot(model)
    try:
        model.to(device).train()
        model.zero_grad(set_to_none=True)  # the caller's gradients are put back afterwards, not trained on
        optimizer = make_adamw(model, min_lr, weight_decay, tuple(betas))
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        average, best = 0.0, math.inf
        for i, lr in enumerate(tqdm(exponential_lrs(min_lr, max_lr, steps), disable=not progress, unit="step",
                                    desc="lr_find")):
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_value = 0.0
            for micro in range(grad_accum):
                batch = {k: v.to(device) if torch.is_tensor(v) else v
                         for k, v in batches.train_batch(i, micro, 0, 1).items()}
                with autocast():
                    loss = model(**batch).loss / grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                loss_value += loss.item()
            if not math.isfinite(loss_value):
                stopped_early = True
                break
            if scaler:
                scaler.unscale_(optimizer)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            average = beta * average + (1 - beta) * loss_value
            smoothed = average / (1 - beta ** (i + 1))
            lrs.append(lr)
            raw_losses.append(loss_value)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > best + (diverge - 1) * abs(best):  # diverge × best for a positive loss
                stopped_early = i < steps - 1
                break
    finally:
        snapshot.restore(model)
    lowest = int(np.argmin(losses)) if losses else None
    return LRFindResult(lrs=lrs, losses=losses, raw_losses=raw_losses, suggestion=steepest_descent_lr(lrs, losses),
                        min_loss_lr=None if lowest is None else lrs[lowest] / 10, stopped_early=stopped_early)


def plot_lr_find(result: LRFindResult, path: str | Path, title: str | None = None) -> Path:
    """The smoothed (and faint raw) loss against the learning rate on a log axis, with the suggestions marked;
    written as a PNG atomically."""
    plt = pyplot()

    if not result.lrs:
        raise DlforgeError("the learning-rate range test recorded no loss (it diverged at the first step): "
                           "lower min_lr")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(result.lrs, result.raw_losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.losses, color="tab:blue", linewidth=1.5, label="smoothed loss")
    for lr, colour, name in ((result.suggestion, "tab:red", "steepest"), (result.min_loss_lr, "tab:green",
                                                                            "min loss / 10")):
        if lr is not None:
            y = float(np.interp(np.log(lr), np.log(result.lrs), result.losses))
            ax.plot([lr], [y], marker="o", color=colour, linestyle="none", label=f"{name}: {lr:.2e}")
            ax.axvline(lr, color=colour, alpha=0.3, linewidth=1)
    # keep the plot on the interesting part: the divergence can be orders of magnitude above the rest
    low, first = float(min(np.min(result.losses), np.min(result.raw_losses))), result.losses[0]
    span = max(first - low, 0.1 * abs(low), 1e-6)
    ax.set_ylim(low - 0.1 * span, first + 0.5 * span)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return atomic_save_figure(fig, path)
