"""Sampling loops for a trained diffusion model: generation, img2img, inpainting, outpainting, a process strip.

The loops work with any model exposing `config` (image_size, channels, num_classes, num_train_timesteps,
beta_schedule, prediction_type) and `predict(x_t, t, labels) -> ε or v` (dlforge.models.unet.DiffusionModel).
Schedulers ("ddpm" | "ddim" | "dpm++", or a scheduler object) do the per-step arithmetic.

Every function takes `seed` (an int or a torch.Generator): all randomness (starting noise, DDPM/RePaint noise)
comes from one CPU generator, so the same call gives the same images on any device. Large batches run in chunks
of `batch_size`. Images are (B, C, H, W) (or one (C, H, W)) floats in [-1, 1].

Classifier-free guidance (Ho & Salimans, 2022): out = out_uncond + g · (out_cond − out_uncond), with the
unconditional output from the null label (index num_classes); both halves run in one forward pass. It applies to
the model output (ε or v); both are affine in x̂_0 and ε̂, so guiding either is the same linear extrapolation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import save_grid
from ..errors import DlforgeError
from .schedulers import DDIMScheduler, NoiseScheduler, make_scheduler


# ------------------------------------------------------------------------------------------- shared pieces
def _generator(seed) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def _randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _scheduler(model, scheduler, steps: int, eta: float) -> NoiseScheduler:
    """A scheduler by name on the model's schedule, or the given scheduler object (checked against the model;
    a DDIMScheduler's eta is set to `eta` when that is non-zero)."""
    c = model.config
    if isinstance(scheduler, NoiseScheduler):
        sched = scheduler
        if (sched.num_train_timesteps, sched.prediction_type) != (c.num_train_timesteps, c.prediction_type):
            raise DlforgeError(f"the scheduler has {sched.num_train_timesteps} timesteps and predicts "
                               f"{sched.prediction_type}, the model {c.num_train_timesteps} and {c.prediction_type}:"
                               f" build it with make_scheduler(name, model.config)")
    else:
        sched = make_scheduler(scheduler, c)
    if not math.isfinite(eta) or eta < 0:
        raise DlforgeError(f"eta must be a finite number >= 0, got {eta}")
    if eta:
        if not isinstance(sched, DDIMScheduler):
            raise DlforgeError(f"eta applies to the ddim scheduler only, not {scheduler!r}")
        sched.eta = eta
    sched.set_timesteps(steps)
    return sched


def _labels(model, labels, n: int, guidance_scale: float) -> torch.Tensor | None:
    """(n,) long labels on the model's device, or None (unconditional / null label). Every sampler calls this
    first, so a non-finite guidance scale is refused before any work (it would give an all-NaN, black image)."""
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise DlforgeError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    k = model.config.num_classes
    if labels is None:
        if guidance_scale != 1.0:
            raise DlforgeError("classifier-free guidance needs labels: give labels or use guidance_scale 1")
        return None
    if not k:
        raise DlforgeError("this model is unconditional (num_classes = 0): labels and guidance need a model "
                           "trained with classes")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(n)
    if labels.numel() != n:
        raise DlforgeError(f"got {labels.numel()} labels for {n} images: give one label or one per image")
    if labels.min() < 0 or labels.max() >= k:
        raise DlforgeError(f"labels must be in 0..{k - 1}, got {labels.tolist()}")
    return labels.to(_device(model))


def _model_output(model, x, t: int, labels, guidance_scale: float) -> torch.Tensor:
    """ε or v for x (B, C, H, W) at timestep t, with classifier-free guidance when guidance_scale != 1."""
    dtype = next(model.parameters()).dtype
    ts = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    if labels is None or guidance_scale == 1.0:
        return model.predict(x.to(dtype), ts, labels).float()
    null = torch.full_like(labels, model.config.num_classes)
    out = model.predict(torch.cat([x, x]).to(dtype), torch.cat([ts, ts]), torch.cat([labels, null])).float()
    cond, uncond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def _denoise(model, sched: NoiseScheduler, x, timesteps, labels, guidance_scale, generator,
             on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the reverse process from x at timesteps[0] through the listed timesteps; returns the clean sample."""
    sched.reset()
    for i, t in enumerate(timesteps.tolist()):
        if on_step is not None:
            on_step(i, x)
        x = sched.step(_model_output(model, x, t, labels, guidance_scale), t, x, generator=generator).prev_sample
    return x


def _images(model, images) -> torch.Tensor:
    """(B, C, H, W) float32 on the model's device, checked against the model's image shape."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    c = model.config
    if images.dim() != 4 or images.shape[1:] != (c.channels, c.image_size, c.image_size):
        raise DlforgeError(f"images must be ({c.channels}, {c.image_size}, {c.image_size}) for this model, got "
                           f"{tuple(images.shape)}: resize them first (dlforge.data.images.load_image(path, size, "
                           f"channels))")
    return images.to(_device(model))


def _chunks(n: int, batch_size: int):
    if batch_size < 1:
        raise DlforgeError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _part(labels, s: slice):
    return None if labels is None else labels[s]


# ------------------------------------------------------------------------------------------- public loops
def generate(model, n: int, steps: int = 50, scheduler="ddim", labels=None, guidance_scale: float = 1.0,
             eta: float = 0.0, seed=0, batch_size: int = 64) -> torch.Tensor:
    """n new images (n, C, H, W) in [-1, 1] from Gaussian noise. labels: None, one label, or n labels."""
    if n < 1:
        raise DlforgeError(f"n must be >= 1, got {n}")
    c, gen, device = model.config, _generator(seed), _device(model)
    labels = _labels(model, labels, n, guidance_scale)
    with _eval_mode(model):
        sched = _scheduler(model, scheduler, steps, eta)
        noise = _randn((n, c.channels, c.image_size, c.image_size), gen, device)  # all drawn up front
        out = [_denoise(model, sched, noise[s], sched.timesteps, _part(labels, s), guidance_scale, gen)
               for s in _chunks(n, batch_size)]
    return torch.cat(out).clamp(-1, 1)


def img2img(model, images, strength: float = 0.6, steps: int = 50, scheduler="ddim", labels=None,
            guidance_scale: float = 1.0, eta: float = 0.0, seed=0, batch_size: int = 64) -> torch.Tensor:
    """Noise `images` part-way and denoise them again (SDEdit, Meng et al., 2022).

    As in diffusers, the first (1 − strength) fraction of the `steps` timesteps is skipped: the images are noised
    to the first remaining timestep and denoised from there. strength 0 returns the input; 1 ignores it.
    """
    if not 0.0 <= strength <= 1.0:
        raise DlforgeError(f"strength must be in [0, 1], got {strength}")
    images, gen = _images(model, images), _generator(seed)
    labels = _labels(model, labels, len(images), guidance_scale)
    with _eval_mode(model):
        sched = _scheduler(model, scheduler, steps, eta)
        start = steps - min(int(steps * strength), steps)
        timesteps = sched.timesteps[start:]
        if len(timesteps) == 0:
            return images.clone()
        noise = _randn(images.shape, gen, images.device)
        x = sched.add_noise(images, noise, int(timesteps[0]))
        out = [_denoise(model, sched, x[s], timesteps, _part(labels, s), guidance_scale, gen)
               for s in _chunks(len(images), batch_size)]
    return torch.cat(out).clamp(-1, 1)


def _mask(mask, images: torch.Tensor) -> torch.Tensor:
    """Any of (H, W), (1|C, H, W), (B, 1|C, H, W) -> float {0, 1} broadcastable to images; 1 = fill."""
    mask = torch.as_tensor(mask).to(images.device)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    try:
        torch.broadcast_shapes(mask.shape, images.shape)
    except RuntimeError:
        raise DlforgeError(f"mask of shape {tuple(mask.shape)} does not fit images of shape "
                           f"{tuple(images.shape)}: give (H, W) or (B, 1, H, W)") from None
    return (mask.float() > 0.5).float()


def _repaint(model, sched: NoiseScheduler, image, mask, labels, guidance_scale, gen, resample: int,
             jump: int) -> torch.Tensor:
    """RePaint (Lugmayr et al., 2022) on one chunk: before each step the known region (mask 0) is replaced by
    the original noised to the current timestep; after each `jump` steps the sample is noised back `jump` steps
    and those steps are redone, `resample` times in all, so the filled region harmonises with the known one."""
    ts = sched.timesteps.tolist()
    level = lambda i: ts[i] if i < len(ts) else -1  # timestep of level i; past the end: clean
    redone = [0] * (len(ts) + 1)
    x = _randn(image.shape, gen, image.device)
    sched.reset()
    i = 0
    while i < len(ts):
        known = sched.add_noise(image, _randn(image.shape, gen, image.device), ts[i])
        x = mask * x + (1 - mask) * known
        x = sched.step(_model_output(model, x, ts[i], labels, guidance_scale), ts[i], x, generator=gen).prev_sample
        i += 1
        if i < len(ts) and i % jump == 0 and redone[i] < resample - 1:
            redone[i] += 1
            x = sched.renoise(x, _randn(x.shape, gen, x.device), level(i), level(i - jump))
            i -= jump
    return mask * x.clamp(-1, 1) + (1 - mask) * image  # the known region exactly as given


def inpaint(model, images, mask, steps: int = 50, scheduler="ddpm", resample: int = 1, jump: int = 1,
            labels=None, guidance_scale: float = 1.0, eta: float = 0.0, seed=0, batch_size: int = 64):
    """Fill the region where `mask` is 1 (white) so it fits the rest of the image, which is kept exactly.

    resample r > 1 and jump u turn on RePaint's resampling: after every u steps, noise back u steps and redo them,
    r passes in all (the paper uses r = 10, u = 10 with 250 DDPM steps). DDPM suits this best (it is stochastic);
    DDIM and DPM-Solver++ also run (a repeated DPM-Solver++ step falls back to first order).
    """
    if resample < 1 or jump < 1:
        raise DlforgeError(f"resample and jump must be >= 1, got {resample} and {jump}")
    images, gen = _images(model, images), _generator(seed)
    mask = _mask(mask, images)
    mask = mask.expand(len(images), *mask.shape[1:])  # (B, 1|C, H, W)
    labels = _labels(model, labels, len(images), guidance_scale)
    with _eval_mode(model):
        sched = _scheduler(model, scheduler, steps, eta)
        out = [_repaint(model, sched, images[s], mask[s], _part(labels, s), guidance_scale, gen, resample, jump)
               for s in _chunks(len(images), batch_size)]
    return torch.cat(out)


def outpaint(model, images, pad, steps: int = 50, scheduler="ddpm", resample: int = 1, jump: int = 1,
             labels=None, guidance_scale: float = 1.0, eta: float = 0.0, seed=0, batch_size: int = 64):
    """Extend images beyond their borders by inpainting a frame around them.

    The canvas is the model's resolution S×S: `pad` (pixels of that canvas, one int or (top, right, bottom, left))
    is the frame to invent, and each input image (any size) is resized (bilinear, antialiased) to the inner
    (S − top − bottom)×(S − left − right) window and placed there. So a 28×28 image with pad 4 becomes a 20×20
    centre of a new 28×28 picture. Returns (B, C, S, S); the centre is the resized input exactly.
    """
    c = model.config
    top, right, bottom, left = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
    inner_h, inner_w = c.image_size - top - bottom, c.image_size - left - right
    if min(top, right, bottom, left) < 0 or inner_h < 1 or inner_w < 1:
        raise DlforgeError(f"pad {pad} leaves no room for the image on a {c.image_size}×{c.image_size} canvas")
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != c.channels:
        raise DlforgeError(f"images must have {c.channels} channel(s), got shape {tuple(images.shape)}")
    if images.shape[-2:] != (inner_h, inner_w):
        images = F.interpolate(images, size=(inner_h, inner_w), mode="bilinear", antialias=True,
                               align_corners=False).clamp(-1, 1)
    canvas = torch.zeros(len(images), c.channels, c.image_size, c.image_size)
    canvas[:, :, top:top + inner_h, left:left + inner_w] = images
    mask = torch.ones(1, 1, c.image_size, c.image_size)
    mask[:, :, top:top + inner_h, left:left + inner_w] = 0
    return inpaint(model, canvas, mask, steps, scheduler, resample, jump, labels, guidance_scale, eta, seed,
                   batch_size)


def process_strip(model, image, path: str | Path, steps: int = 50, scheduler="ddim", frames: int = 8,
                  labels=None, guidance_scale: float = 1.0, eta: float = 0.0, seed=0, scale: int = 2) -> torch.Tensor:
    """A PNG of diffusion at work (pictures enlarged `scale` times): the top row noises `image` from clean to
    the first sampling timestep (frames − 1 noise levels of the schedule), the bottom row starts from that noisiest
    picture and denoises it back, shown at the same levels in reverse and ending at the result. Both rows read
    left to right. Returns the (2·frames, C, H, W) pictures (clamped to [-1, 1]) written to `path`."""
    if frames < 2:
        raise DlforgeError(f"frames must be >= 2, got {frames}")
    image, gen = _images(model, image)[:1], _generator(seed)
    labels = _labels(model, labels, 1, guidance_scale)
    with _eval_mode(model):
        sched = _scheduler(model, scheduler, steps, eta)
        n = len(sched.timesteps)
        shown = sorted(set(np.linspace(0, n - 1, frames - 1).round().astype(int).tolist()))  # schedule indices
        noise = _randn(image.shape, gen, image.device)
        forward = [image] + [sched.add_noise(image, noise, int(sched.timesteps[i])) for i in reversed(shown)]
        reverse = []
        x0 = _denoise(model, sched, forward[-1], sched.timesteps, labels, guidance_scale, gen,
                      on_step=lambda i, x: reverse.append(x) if i in shown else None)
    pictures = torch.cat(forward + reverse + [x0]).clamp(-1, 1)
    save_grid(pictures, path, nrow=len(forward), scale=scale)
    return pictures
