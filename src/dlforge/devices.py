"""Where a model runs and in which precision: `resolve_device("auto"|"cpu"|"cuda:N")`, `resolve_precision`.

Below everything that places a model (training, pipelines, the CLI), so none of them imports another for it.
"""

from __future__ import annotations

import torch

from .errors import DlforgeError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DlforgeError(f"device {name!r} was asked for but no CUDA GPU is available: use the CPU (device cpu)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
