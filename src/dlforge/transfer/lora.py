"""LoRA: low-rank adapters on chosen linear layers (Hu et al., 2021).

A frozen weight W (out × in) gets a trainable update ΔW = (α / r) · B A with A (r × in) and
B (out × r); B starts at zero so the adapted model starts equal to the original:

    y = x Wᵀ + (α / r) · dropout(x) Aᵀ Bᵀ

Only A and B (and any modules named in `trainable`) are trained; `lora_state_dict` saves the
adapters alone, and `merge_lora` folds ΔW into W (`unmerge_lora` takes it out again).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import DlforgeError
from ..hub.weights import save_state_dict


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise DlforgeError(f"LoRA rank r must be >= 1, got {r}")
        self.base, self.r, self.scaling = base, r, alpha / r
        # on the base layer's device and dtype, so LoRA can be applied to a model already on the GPU
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x):
        y = self.base(x)
        if not self.merged:
            y = y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        return y

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False


def apply_lora(model: nn.Module, targets: str = r"(c_attn|c_proj|c_fc)$", r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, trainable: str | None = r"^head\.") -> list[str]:
    """Wrap every nn.Linear whose name matches `targets`; freeze everything else except `trainable`.

    Returns the wrapped module names. `trainable` (a regex on parameter names, e.g. the new task
    head) stays trainable besides the adapters.
    """
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and re.search(targets, name) and not name.endswith(".base"):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r, alpha, dropout))
            wrapped.append(name)
    if not wrapped:
        raise DlforgeError(f"no linear layer matches the LoRA targets {targets!r}")
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or bool(trainable and re.search(trainable, name))
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.unmerge()


def lora_state_dict(model: nn.Module, trainable: str | None = r"^head\.") -> dict[str, torch.Tensor]:
    """The adapters (and the `trainable` extras): what a LoRA fine-tune changed."""
    return {k: v for k, v in model.state_dict().items()
            if "lora_" in k or (trainable and re.search(trainable, k))}


def save_lora(model: nn.Module, path: str | Path, trainable: str | None = r"^head\.") -> None:
    save_state_dict(lora_state_dict(model, trainable), path)


def load_lora(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapters saved by `save_lora` into a model that `apply_lora` has wrapped the same way."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise DlforgeError(f"adapter weights do not fit this model (unknown: {', '.join(unknown[:5])}); "
                           "call apply_lora with the same targets first")
    model.load_state_dict(state, strict=False)


def strip_lora(model: nn.Module) -> None:
    """Merge the adapters and put the plain linear layers back (checkpoint keys as before LoRA)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.base)
