"""Noise schedulers: the arithmetic of one reverse-diffusion step, kept apart from models and sampling loops.

The API follows diffusers so its pipelines' shape carries over: a scheduler is built once per sampling run,
`set_timesteps(n)` picks the n training timesteps to visit (`.timesteps`, descending), and
`step(model_output, t, x_t)` returns x at the next (less noisy) timestep. The model predicts either the noise ε
(`prediction_type="epsilon"`) or the velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (`"v_prediction"`, Salimans & Ho, 2022);
both convert to a prediction of the clean sample x̂_0 and of ε.

- `DDPMScheduler` (Ho et al., 2020): ancestral sampling from the posterior q(x_prev | x_t, x̂_0).
- `DDIMScheduler` (Song et al., 2021): x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z with
  σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)); η = 0 is deterministic, η = 1 is DDPM's variance.
- `DPMSolverMultistepScheduler` (Lu et al., 2022, "DPM-Solver++(2M)"): a second-order multistep solver of the
  probability-flow ODE in λ = log(α/σ) using data predictions; first order on the first and last step.

Timestep spacing (Lin et al., 2023, table 2) defaults to what diffusers uses for each scheduler, so results match
diffusers step for step: "leading" for DDPM and DDIM (t = k·⌊T/n⌋, ending at 0), "linspace" for DPM-Solver++
(n + 1 points from T − 1 to 0 rounded, the 0 dropped because its last step lands on the clean sample). "trailing"
(starting at T − 1) is available for all three. After the last timestep, the "previous" ᾱ is 1 (clean data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DlforgeError
from .schedules import BETA_SCHEDULES, alphas_cumprod, make_betas

PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor  # x at the next timestep of the schedule
    pred_original_sample: torch.Tensor | None = None  # x̂_0 predicted at this step


class NoiseScheduler:
    """What every scheduler shares: the schedule tables, timestep spacing, noising and prediction conversions."""

    default_spacing = "leading"
    linspace_extra = 0  # "linspace"/"leading" space n + extra points and keep the first n (the DPM-Solver style)

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", timestep_spacing: str | None = None,
                 betas: torch.Tensor | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise DlforgeError(f"unknown prediction_type {prediction_type!r}: use one of {', '.join(PREDICTION_TYPES)}")
        spacing = timestep_spacing or self.default_spacing
        if spacing not in TIMESTEP_SPACINGS:
            raise DlforgeError(f"unknown timestep_spacing {spacing!r}: use one of {', '.join(TIMESTEP_SPACINGS)}")
        if beta_schedule not in BETA_SCHEDULES and betas is None:
            raise DlforgeError(f"unknown beta schedule {beta_schedule!r}: use one of {', '.join(BETA_SCHEDULES)}")
        # the tables are CPU numbers whatever the default device: a model built on the meta device (to count its
        # parameters before training) still makes its schedule
        with torch.device("cpu"):
            self.betas = (make_betas(beta_schedule, num_train_timesteps) if betas is None
                          else torch.as_tensor(betas, dtype=torch.float64, device="cpu").flatten())  # (T,)
            self.alphas_cumprod = alphas_cumprod(self.betas)  # (T,) float64
            self._alpha_bar = self.alphas_cumprod.tolist()  # Python floats: one lookup per step, no device sync
            self._sqrt_ab = self.alphas_cumprod.sqrt().float()  # (T,) for batched noising
            self._sqrt_one_minus_ab = (1 - self.alphas_cumprod).sqrt().float()
        self.num_train_timesteps = len(self.betas)
        self.beta_schedule, self.prediction_type, self.timestep_spacing = beta_schedule, prediction_type, spacing
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._index: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------- timesteps
    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Choose the `num_inference_steps` training timesteps to visit; `.timesteps` is a descending long tensor."""
        n, T = int(num_inference_steps), self.num_train_timesteps
        if not 1 <= n <= T:
            raise DlforgeError(f"num_inference_steps must be between 1 and num_train_timesteps ({T}), got {n}")
        points = n + self.linspace_extra
        if self.timestep_spacing == "leading":
            timesteps = (np.arange(points) * (T // points))[::-1][:n]
        elif self.timestep_spacing == "trailing":
            timesteps = (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)[:n]
        else:
            timesteps = np.linspace(0, T - 1, points).round()[::-1][:n]
        timesteps = np.array(timesteps, dtype=np.int64)  # a fresh, positively strided copy
        if len(np.unique(timesteps)) != n:
            raise DlforgeError(f"{n} steps with {self.timestep_spacing!r} spacing repeat timesteps: use fewer steps")
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self.num_inference_steps = n
        self._index = {t: i for i, t in enumerate(timesteps.tolist())}
        self.reset()

    def reset(self) -> None:
        """Forget any state carried between steps (multistep solvers)."""

    def index_of(self, timestep) -> int:
        if self.timesteps is None:
            raise DlforgeError(f"call {type(self).__name__}.set_timesteps(n) before step()")
        t = int(timestep)
        if t not in self._index:
            raise DlforgeError(f"timestep {t} is not in this scheduler's schedule (set_timesteps chose "
                               f"{self.timesteps[0].item()}..{self.timesteps[-1].item()})")
        return self._index[t]

    def previous_timestep(self, timestep) -> int:
        """The next timestep of the schedule after `timestep`, or −1 (clean data) after the last one."""
        i = self.index_of(timestep)
        return int(self.timesteps[i + 1]) if i + 1 < self.num_inference_steps else -1

    def alpha_bar(self, timestep: int) -> float:
        """ᾱ_t as a Python float; 1.0 for t < 0 (the clean sample)."""
        return 1.0 if timestep < 0 else self._alpha_bar[timestep]

    # ------------------------------------------------------------------------------------------- noising
    def _coefficients(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """√ᾱ_t and √(1 − ᾱ_t) for a batch of timesteps, shaped to broadcast over `like` (B, ...)."""
        t = torch.as_tensor(timesteps, device=like.device).long().reshape(-1)  # (B,) or (1,)
        shape = (-1,) + (1,) * (like.dim() - 1)
        a = self._sqrt_ab.to(like.device)[t].reshape(shape).to(like.dtype)
        s = self._sqrt_one_minus_ab.to(like.device)[t].reshape(shape).to(like.dtype)
        return a, s

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward process q(x_t | x_0): √ᾱ_t x_0 + √(1 − ᾱ_t) ε. `timesteps`: int or (B,) long."""
        a, s = self._coefficients(timesteps, original)
        return a * original + s * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, the v-prediction target for clean `sample` noised with `noise`."""
        a, s = self._coefficients(timesteps, sample)
        return a * noise - s * sample

    def training_target(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """What the model learns to output for x_t = add_noise(sample, noise, t): ε or v."""
        return noise if self.prediction_type == "epsilon" else self.get_velocity(sample, noise, timesteps)

    def renoise(self, sample: torch.Tensor, noise: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        """q(x_{t_to} | x_{t_from}) for t_to > t_from: noise a sample further (RePaint's jump back)."""
        ratio = self.alpha_bar(t_to) / self.alpha_bar(t_from)  # ᾱ_to / ᾱ_from, in (0, 1]
        return math.sqrt(ratio) * sample + math.sqrt(1 - ratio) * noise

    # ------------------------------------------------------------------------------------------- step helpers
    def predict_x0_eps(self, model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: float):
        """The model output at noise level ᾱ converted to (x̂_0, ε̂)."""
        a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        if self.prediction_type == "epsilon":
            return (sample - s * model_output) / a, model_output
        return a * sample - s * model_output, a * model_output + s * sample  # from v = a ε − s x_0, x_t = a x_0 + s ε

    @staticmethod
    def posterior_variance(alpha_bar_t: float, alpha_bar_prev: float) -> float:
        """Var q(x_prev | x_t, x_0) = (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)."""
        return (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)

    @staticmethod
    def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise shaped like `like`, drawn on the generator's device (so a CPU generator gives the
        same noise whatever device the model runs on)."""
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> SchedulerOutput:
        raise NotImplementedError  # abstract: each scheduler defines its own step

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_train_timesteps={self.num_train_timesteps}, beta_schedule="
                f"{self.beta_schedule!r}, prediction_type={self.prediction_type!r}, "
                f"timestep_spacing={self.timestep_spacing!r})")


class DDPMScheduler(NoiseScheduler):
    """Ancestral sampling: x_prev ~ N(μ̃(x_t, x̂_0), β̃) with the posterior's "fixed small" variance β̃."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", clip_sample: bool = True, clip_sample_range: float = 1.0,
                 timestep_spacing: str | None = None, betas: torch.Tensor | None = None):
        super().__init__(num_train_timesteps, beta_schedule, prediction_type, timestep_spacing, betas)
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range

    def step(self, model_output, timestep, sample, generator=None) -> SchedulerOutput:
        t = int(timestep)
        prev = self.previous_timestep(t)
        ab_t, ab_prev = self.alpha_bar(t), self.alpha_bar(prev)
        alpha_t = ab_t / ab_prev  # the one-step α between the two visited timesteps
        x0, _ = self.predict_x0_eps(model_output, sample, ab_t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        # posterior mean μ̃ = √ᾱ_prev β_t/(1 − ᾱ_t) x̂_0 + √α_t (1 − ᾱ_prev)/(1 − ᾱ_t) x_t   (DDPM eq. 7)
        x_prev = (math.sqrt(ab_prev) * (1 - alpha_t) / (1 - ab_t)) * x0 \
            + (math.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t)) * sample
        if t > 0:
            std = math.sqrt(max(self.posterior_variance(ab_t, ab_prev), 1e-20))
            x_prev = x_prev + std * self._randn(model_output, generator)
        return SchedulerOutput(x_prev, x0)


class DDIMScheduler(NoiseScheduler):
    """Denoising diffusion implicit models: deterministic for eta = 0, DDPM-like noise for eta = 1."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", eta: float = 0.0, clip_sample: bool = True,
                 clip_sample_range: float = 1.0, timestep_spacing: str | None = None,
                 betas: torch.Tensor | None = None):
        super().__init__(num_train_timesteps, beta_schedule, prediction_type, timestep_spacing, betas)
        if eta < 0:
            raise DlforgeError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
        self.eta, self.clip_sample, self.clip_sample_range = eta, clip_sample, clip_sample_range

    def step(self, model_output, timestep, sample, generator=None, eta: float | None = None) -> SchedulerOutput:
        eta = self.eta if eta is None else eta
        t = int(timestep)
        ab_t, ab_prev = self.alpha_bar(t), self.alpha_bar(self.previous_timestep(t))
        x0, eps = self.predict_x0_eps(model_output, sample, ab_t)
        if self.clip_sample:  # ε̂ stays the model's (as diffusers without use_clipped_model_output)
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        std = eta * math.sqrt(self.posterior_variance(ab_t, ab_prev))
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - std**2, 0.0)) * eps
        if eta > 0:
            x_prev = x_prev + std * self._randn(model_output, generator)
        return SchedulerOutput(x_prev, x0)


class DPMSolverMultistepScheduler(NoiseScheduler):
    """DPM-Solver++(2M): data-prediction multistep solver, second order from the second step on.

    With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t), h = λ_next − λ_t and D0 = x̂_0(t):
        first order (DDIM):  x_next = (σ_next/σ_t) x_t − α_next (e^{−h} − 1) D0
        second order:        ... with D0 replaced by D0 + ½ (D0 − D_prev) / r,  r = (λ_t − λ_prev)/h
    The last step (to σ = 0) is first order ("lower_order_final"); it returns x̂_0 exactly. The previous data
    prediction is used only when it came from the previous timestep of the schedule, so starting part-way
    (img2img) or repeating a step (RePaint) falls back to first order instead of mixing trajectories.
    """

    default_spacing = "linspace"
    linspace_extra = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", solver_order: int = 2, timestep_spacing: str | None = None,
                 betas: torch.Tensor | None = None):
        super().__init__(num_train_timesteps, beta_schedule, prediction_type, timestep_spacing, betas)
        if solver_order not in (1, 2):
            raise DlforgeError(f"solver_order must be 1 or 2, got {solver_order}")
        self.solver_order = solver_order
        self._last: tuple[int, torch.Tensor] | None = None  # (schedule index, x̂_0) of the previous step

    def reset(self) -> None:
        self._last = None

    def _alpha_sigma_lambda(self, timestep: int) -> tuple[float, float, float]:
        ab = self.alpha_bar(timestep)
        alpha, sigma = math.sqrt(ab), math.sqrt(1 - ab)
        return alpha, sigma, (math.log(alpha / sigma) if sigma > 0 else math.inf)

    def step(self, model_output, timestep, sample, generator=None) -> SchedulerOutput:
        t = int(timestep)
        i = self.index_of(t)
        prev = self.previous_timestep(t)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(t)
        alpha_n, sigma_n, lambda_n = self._alpha_sigma_lambda(prev)
        x0, _ = self.predict_x0_eps(model_output, sample, alpha_s**2)
        exp_neg_h = (sigma_n * alpha_s) / (alpha_n * sigma_s)  # e^{−h}, 0 on the last step (σ_next = 0)
        d = x0
        second = (self.solver_order == 2 and self._last is not None and self._last[0] == i - 1 and prev >= 0)
        if second:
            lambda_p = self._alpha_sigma_lambda(int(self.timesteps[i - 1]))[2]
            r = (lambda_s - lambda_p) / (lambda_n - lambda_s)
            d = x0 + (0.5 / r) * (x0 - self._last[1])
        x_next = (sigma_n / sigma_s) * sample - (alpha_n * (exp_neg_h - 1.0)) * d
        self._last = (i, x0)
        return SchedulerOutput(x_next, x0)


SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
SCHEDULER_ALIASES = {"dpm": "dpm++", "dpmsolver++": "dpm++", "dpm-solver++": "dpm++"}


def make_scheduler(name: str, config=None, **kwargs) -> NoiseScheduler:
    """A scheduler by name ("ddpm" | "ddim" | "dpm++") matching a model's training schedule.

    `config` is anything with `num_train_timesteps`, `beta_schedule` and `prediction_type` (a DiffusionConfig);
    `kwargs` are passed to the scheduler (eta, clip_sample, timestep_spacing, ...).

    DDIM built for a model does not clip x̂_0 (pass clip_sample=True for diffusers' default): DDIM keeps the
    model's ε̂ while clipping x̂_0, and under classifier-free guidance the extrapolated prediction leaves [-1, 1]
    at high noise, so the two disagree and deterministic sampling drifts off the data (on the MNIST benchmark
    model: 61 % conditional accuracy at guidance 2 with clipping, 100 % without; DPM-Solver++ never clips and
    DDPM's fresh noise hides the mismatch).
    """
    key = SCHEDULER_ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in SCHEDULERS:
        raise DlforgeError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    if config is not None:
        for field in ("num_train_timesteps", "beta_schedule", "prediction_type"):
            kwargs.setdefault(field, getattr(config, field))
        if key == "ddim":
            kwargs.setdefault("clip_sample", False)
    try:
        return SCHEDULERS[key](**kwargs)
    except TypeError as e:
        raise DlforgeError(f"scheduler {key!r} does not take these options ({e})") from None
