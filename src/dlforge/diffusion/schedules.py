"""Noise schedules of Gaussian diffusion: the betas β_t and the cumulative products ᾱ_t = Π_{s≤t} (1 − β_s).

The forward process noises data as x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, so ᾱ_t runs from ≈1 (clean, t = 0) to ≈0
(pure noise, t = T − 1).

- `linear`: β_t evenly spaced from 1e-4 to 0.02 over T steps (Ho et al., 2020; the DDPM paper's T = 1000).
- `cosine`: ᾱ(τ) = cos²(((τ + s)/(1 + s)) · π/2) with s = 0.008 on τ = t/T, discretised as
  β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), 0.999) (Nichol & Dhariwal, 2021); it destroys information more slowly
  at the start, which helps small images. (`squaredcos_cap_v2` in diffusers.)

Computed in float64: the schedulers read single coefficients from these tables.
"""

from __future__ import annotations

import math

import torch

from ..errors import DlforgeError

BETA_SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)  # (T,)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    tau = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # (T + 1,) from 0 to 1
    alpha_bar = torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)  # (T,)


def make_betas(schedule: str, num_timesteps: int) -> torch.Tensor:
    if num_timesteps < 2:
        raise DlforgeError(f"num_train_timesteps must be at least 2, got {num_timesteps}")
    if schedule == "linear":
        return linear_betas(num_timesteps)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise DlforgeError(f"unknown beta schedule {schedule!r}: use one of {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s), shape (T,)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)
