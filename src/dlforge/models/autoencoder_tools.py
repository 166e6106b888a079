"""Tools on a trained autoencoder / VAE: latent interpolation, a 2-D latent scatter plot, and likelihood bounds.

    negative_elbo(model, x, k)             per image: mean over k posterior samples of −log p(x|z), + KL (β = 1)
    importance_weighted_nll(model, x, k)   per image: −log (1/k) Σ_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x)
                                           (Burda et al. 2016: an upper bound on −log p(x) that tightens as k
                                           grows; k = 1 is the negative ELBO)

Both run the model in eval mode with a generator seeded `seed`, so they are deterministic (the binarisation of
binarize="dynamic" models is fixed too), and report nats per image. The scatter projects the latent means onto
their first two principal components (exact SVD, so no global RNG is used) when latent_dim > 2.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import DlforgeError
from ..io import atomic_save_figure, pyplot
from .autoencoder import VAE


def as_signed_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images (N, C, H, W) -> float [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    return images.float()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluate without gradients, then restore the model's training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start: start + batch_size]


def encode_all(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Latent codes (means for a VAE) of all images: (N, latent) on the CPU."""
    device = _device(model)
    with eval_mode(model):
        return torch.cat([model.encode(as_signed_images(b).to(device)).cpu() for b in _batches(images, batch_size)])


def interpolate(model, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode `steps` evenly spaced points on the line from encode(a) to encode(b): (steps, C, H, W) in [-1, 1].

    a, b: one image each, (C, H, W) or (1, C, H, W); the first and last outputs are decode(encode(a / b))."""
    if steps < 2:
        raise DlforgeError(f"interpolation needs at least 2 steps (the two end points), got {steps}")
    device = _device(model)
    ends = torch.cat([as_signed_images(a).reshape(1, *a.shape[-3:]), as_signed_images(b).reshape(1, *b.shape[-3:])])
    with eval_mode(model):
        za, zb = model.encode(ends.to(device))  # (latent,) each
        t = torch.linspace(0, 1, steps, device=device).unsqueeze(1)  # (steps, 1)
        return model.decode((1 - t) * za + t * zb)


def project_2d(z: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, 2): the first two principal components (d > 2), the codes themselves (d = 2), or (z, 0)."""
    z = z.double()
    if z.shape[1] == 1:
        return torch.cat([z, torch.zeros_like(z)], dim=1).float()
    if z.shape[1] == 2:
        return z.float()
    centred = z - z.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows of vh: principal directions
    components = vh[:2]  # (2, d)
    # SVD signs are arbitrary: make each direction's largest loading positive so plots are reproducible
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    return (centred @ (components * signs).T).float()


def latent_scatter(model, images: torch.Tensor, labels: torch.Tensor | None, path: str | Path,
                   class_names: list[str] | None = None, batch_size: int = 256, title: str | None = None) -> Path:
    """Scatter the images' latent codes in 2-D (PCA when latent_dim > 2), coloured by label; PNG written atomically."""
    plt = pyplot()

    if len(images) == 0:
        raise DlforgeError("no images to place in the latent scatter")
    points = project_2d(encode_all(model, images, batch_size)).numpy()
    fig, ax = plt.subplots(figsize=(6.0, 5.0), dpi=100)
    size = 4 if len(points) > 2000 else 10
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.6)
    else:
        labels = torch.as_tensor(labels).long().cpu()
        classes = sorted(set(labels.tolist()))
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, cls in enumerate(classes):
            chosen = (labels == cls).numpy()
            name = class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)
            ax.scatter(points[chosen, 0], points[chosen, 1], s=size, alpha=0.6, color=cmap(i % cmap.N), label=name)
        if len(classes) <= 20:
            ax.legend(markerscale=2, fontsize=7, loc="best", framealpha=0.8)
    latent = model.config.latent_dim
    axis = "z" if latent <= 2 else "PC"
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2" if latent > 1 else "")
    ax.set_title(title or f"latent space ({latent}-d{', PCA' if latent > 2 else ''}, {len(points)} images)",
                 fontsize=9)
    return atomic_save_figure(fig, path)


def _require_vae(model, what: str) -> None:
    if not isinstance(model, VAE):
        raise DlforgeError(f"{what} needs a VAE (kind 'vae'); this model is kind {getattr(model, 'kind', '?')!r}")


def _per_image_bound(model: VAE, images: torch.Tensor, k: int, batch_size: int, seed: int, what: str,
                     reduce) -> torch.Tensor:
    """reduce(nll (k, B), kl (B,), log_w (k, B)) -> (B,) nats, over batches of `images`; every batch draws its k
    posterior samples from a generator seeded with `seed`, so a figure does not depend on what came before."""
    _require_vae(model, what)
    if k < 1:
        raise DlforgeError(f"k must be at least 1, got {k}")
    device, out = _device(model), []
    with eval_mode(model):
        for b in _batches(images, batch_size):
            generator = torch.Generator(device=device).manual_seed(seed)
            out.append(reduce(*model.elbo_terms(as_signed_images(b).to(device), k, generator)).cpu())
    return torch.cat(out)


def negative_elbo(model: VAE, images: torch.Tensor, k: int = 1, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """−ELBO per image in nats (β = 1 whatever the model trained with), averaged over k posterior samples: (N,)."""
    return _per_image_bound(model, images, k, batch_size, seed, "the negative ELBO",
                            lambda nll, kl, log_w: nll.mean(0) + kl)


def importance_weighted_nll(model: VAE, images: torch.Tensor, k: int = 100, batch_size: int = 64,
                            seed: int = 0) -> torch.Tensor:
    """Importance-weighted estimate of −log p(x) per image in nats with k samples (IWAE bound): (N,)."""
    return _per_image_bound(model, images, k, batch_size, seed, "the importance-weighted NLL",
                            lambda nll, kl, log_w: -(torch.logsumexp(log_w.double(), dim=0) - math.log(k)).float())
