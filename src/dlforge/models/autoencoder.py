"""Autoencoders: a plain / denoising autoencoder (kind "ae") and a variational autoencoder (kind "vae").

    AE:   z = enc(x̃),  x̂ = dec(z)                    x̃ = x, or x corrupted by noise in training (denoising)
          loss = mean over pixels of (x̂ - x)²        (likelihood "gaussian")
                 or of BCE(dec(z), (x+1)/2)           (likelihood "bernoulli": the decoder gives logits)
    VAE:  q(z|x) = N(μ(x), diag σ²(x)),  z = μ + σ·ε, ε ~ N(0, I)     (reparameterisation, Kingma & Welling 2014)
          loss = −ELBO per image in nats = −log p(x|z) summed over pixels + β·KL(q(z|x) ‖ N(0, I))
          (β = 1: the usual VAE; β > 1: β-VAE, Higgins et al. 2017). logs: "recon" and "kl", both per image.

Likelihoods. "bernoulli": each pixel in [0, 1] (= (x+1)/2) is the probability of a binary pixel; the decoder
outputs logits and images are 2·sigmoid(logits) − 1. With binarize="dynamic" every training batch is sampled
afresh as Bernoulli(p = pixel) (Salakhutdinov & Murray 2008), and eval mode uses one fixed binarisation (a
generator seeded 0 per call, so it is deterministic for a given batching), which makes the nats those of
binarised MNIST. "gaussian": the decoder output is the mean on the [-1, 1] scale; the VAE learns ONE scalar
log σ shared by all pixels (σ-VAE, Rybkin et al. 2021: the learned σ settles at the RMS reconstruction error,
which balances the reconstruction and KL terms without tuning β). Its nats are densities on the [-1, 1] scale
(on the [0, 1] scale they are D·log 2 lower, D = C·H·W). The AE's gaussian loss is the plain MSE.

Denoising: noise="gaussian" adds noise_level·N(0, 1) (clamped to [-1, 1]); noise="masking" sets a fraction
noise_level of the pixels (all channels) to -1 (black). The noise is applied to the encoder's input in training
mode only; the target is always the clean (or binarised) image.

Architectures. "mlp": flatten → hidden_sizes → latent, and the mirror image back (ReLU). "conv": a 3×3 stem with
base_channels, then stride-2 4×4 convolutions (channels doubling, at most 8·base) while the side is even and
above 8 (28→14→7, 32→16→8, 64→32→16→8), flatten → linear → latent; the decoder mirrors it with transposed
convolutions. No batch norm: a reconstruction then depends on its own image only (anomaly scores need that).

Preview (the recipe's sample grid): originals interleaved with their reconstructions (posterior mean for the
VAE) — x₀ x̂₀ x₁ x̂₁ … — and, for the VAE, then as many decoded prior samples. Save it with an even nrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
BINARIZE = ("dynamic", "none")
NOISES = ("none", "gaussian", "masking")
MIN_LOG_SIGMA = -6.0  # the learned Gaussian σ stays ≥ e⁻⁶ ≈ 0.0025 (a perfect fit would drive log σ to −∞)


@dataclass
class AutoencoderConfig(ModelConfig):
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # unused: autoencoders are unconditional (kept for the image-model contract)
    architecture: str = "mlp"  # mlp | conv
    latent_dim: int = 32  # size of the bottleneck z
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256])  # mlp: encoder widths (decoder reversed)
    base_channels: int = 32  # conv: channels of the first stage
    variational: bool = False  # set by the VAE class; the plain Autoencoder refuses True
    beta: float = 1.0  # weight of the KL term (VAE)
    likelihood: str = "gaussian"  # gaussian (MSE; VAE: learned scalar σ) | bernoulli (decoder logits)
    binarize: str = "none"  # dynamic: train on Bernoulli(pixel) samples (likelihood bernoulli only) | none
    noise: str = "none"  # denoising corruption of the encoder input in training: none | gaussian | masking
    noise_level: float = 0.25  # gaussian: std on the [-1, 1] scale; masking: fraction of pixels set to -1

    def __post_init__(self):
        check_model_config(self, at_least_one=("image_size", "channels", "latent_dim", "base_channels"))
        for name, value, allowed in (("architecture", self.architecture, ARCHITECTURES),
                                     ("likelihood", self.likelihood, LIKELIHOODS),
                                     ("binarize", self.binarize, BINARIZE), ("noise", self.noise, NOISES)):
            if value not in allowed:
                raise DlforgeError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]  # tuples from Python callers -> JSON lists
        for name in ("image_size", "channels", "latent_dim", "base_channels"):
            if int(getattr(self, name)) < 1:
                raise DlforgeError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise DlforgeError(f"num_classes must be 0 or more, got {self.num_classes}")
        if self.architecture == "mlp" and (not self.hidden_sizes or min(self.hidden_sizes) < 1):
            raise DlforgeError(f"hidden_sizes must be one or more positive widths, got {self.hidden_sizes}")
        if self.binarize == "dynamic" and self.likelihood != "bernoulli":
            raise DlforgeError("binarize='dynamic' needs likelihood='bernoulli' (binary pixels); use binarize='none'")
        if self.beta < 0:
            raise DlforgeError(f"beta must be 0 or more, got {self.beta}")
        if self.noise_level < 0 or (self.noise == "masking" and self.noise_level >= 1):
            raise DlforgeError(f"noise_level must be ≥ 0 (and < 1 for masking), got {self.noise_level}")


# ------------------------------------------------------------------------------------------- networks
def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers between consecutive sizes, ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_plan(image_size: int, base_channels: int) -> tuple[list[int], int]:
    """Channels after the stem and after each stride-2 stage, and the side of the last feature map."""
    channels, side = [base_channels], image_size
    while side > 8 and side % 2 == 0:
        side //= 2
        channels.append(min(channels[-1] * 2, 8 * base_channels))
    return channels, side


class ConvEncoder(nn.Module):
    def __init__(self, c: AutoencoderConfig, out_features: int):
        super().__init__()
        chans, side = conv_plan(c.image_size, c.base_channels)
        layers: list[nn.Module] = [nn.Conv2d(c.channels, chans[0], 3, padding=1), nn.ReLU()]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]  # halves the side exactly (even sides)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1] * side * side, out_features)

    def forward(self, x):  # (B, C, H, W) -> (B, out_features)
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        chans, self.side = conv_plan(c.image_size, c.base_channels)
        self.top = chans[-1]
        self.proj = nn.Linear(c.latent_dim, self.top * self.side * self.side)
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(chans[:0:-1], chans[-2::-1]):  # back through the stages
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.ReLU()]  # doubles the side
        layers.append(nn.Conv2d(chans[0], c.channels, 3, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z):  # (B, latent) -> (B, C, H, W)
        return self.features(self.proj(z).view(-1, self.top, self.side, self.side))


class MLPEncoder(nn.Module):
    def __init__(self, c: AutoencoderConfig, out_features: int):
        super().__init__()
        self.net = _mlp([c.channels * c.image_size ** 2, *c.hidden_sizes, out_features])

    def forward(self, x):  # (B, C, H, W) -> (B, out_features)
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        self.shape = (c.channels, c.image_size, c.image_size)
        self.net = _mlp([c.latent_dim, *reversed(c.hidden_sizes), math.prod(self.shape)])  # the encoder mirrored

    def forward(self, z):  # (B, latent) -> (B, C, H, W)
        return self.net(z).view(-1, *self.shape)


# ------------------------------------------------------------------------------------------- models
class _AutoencoderBase(PretrainedModel):
    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, encoder_outputs: int):
        super().__init__()
        self.config = c = config
        conv = c.architecture == "conv"
        self.encoder = ConvEncoder(c, encoder_outputs) if conv else MLPEncoder(c, encoder_outputs)
        self.decoder = ConvDecoder(c) if conv else MLPDecoder(c)

    def _generator(self, device) -> torch.Generator | None:
        """None (global RNG) in training; in eval a fresh generator seeded 0, so eval losses are deterministic."""
        return None if self.training else torch.Generator(device=device).manual_seed(0)

    def prepare(self, images: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder input, clean target), both (B, C, H, W) in [-1, 1]: binarised if asked, corrupted in training."""
        c, x = self.config, images.float()
        if c.binarize == "dynamic":
            x = torch.bernoulli((x + 1) / 2, generator=generator) * 2 - 1
        x_in = x
        if self.training and c.noise == "gaussian" and c.noise_level > 0:
            x_in = (x + c.noise_level * torch.randn_like(x)).clamp(-1, 1)
        elif self.training and c.noise == "masking" and c.noise_level > 0:
            keep = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) >= c.noise_level  # (B, 1, H, W)
            x_in = torch.where(keep, x, torch.full_like(x, -1.0))
        return x_in, x

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> images in [-1, 1] (Bernoulli: 2·sigmoid(logits) − 1 = tanh(logits / 2))."""
        out = out.float()
        return torch.tanh(out / 2) if self.config.likelihood == "bernoulli" else out.clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, latent); VAE: the mean μ
        return self.encoder(images)[:, : self.config.latent_dim].float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, C, H, W) in [-1, 1]
        return self.to_image(self.decoder(z))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def reconstruction_error(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss of decoder output `out` against the target in [-1, 1]: (B, C, H, W)."""
        out = out.float()
        if self.config.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, (target + 1) / 2, reduction="none")
        return (out - target) ** 2

    @torch.no_grad()
    def preview(self, images: torch.Tensor, labels=None, seed: int = 0) -> torch.Tensor:
        """Originals interleaved with reconstructions: (2N, C, H, W) in [-1, 1] (the VAE appends N prior samples)."""
        was_training = self.training
        self.eval()
        try:
            x = images.float()
            return torch.stack([x.clamp(-1, 1), self.reconstruct(x)], dim=1).flatten(0, 1)  # (2N, C, H, W)
        finally:
            self.train(was_training)


class Autoencoder(_AutoencoderBase):
    """Plain or denoising autoencoder (see the module docstring)."""

    kind = "ae"
    log_names = ("mse",)  # mean squared error on the [-1, 1] scale, whatever the training loss

    def __init__(self, config: AutoencoderConfig):
        if config.variational:
            raise DlforgeError("variational=True is the VAE (kind 'vae'): build VAE(config) instead of Autoencoder")
        super().__init__(config, config.latent_dim)

    def forward(self, images: torch.Tensor, labels=None) -> ModelOutput:
        x_in, target = self.prepare(images, self._generator(images.device))
        out = self.decoder(self.encoder(x_in)).float()  # (B, C, H, W)
        loss = self.reconstruction_error(out, target).mean()
        mse = ((self.to_image(out) - target) ** 2).mean()
        return ModelOutput(loss=loss, logits=out, logs={"mse": mse.detach()})

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        raise DlforgeError("a plain autoencoder has no prior to sample from: train a VAE (kind 'vae')")


class VAE(_AutoencoderBase):
    """Variational autoencoder; forward's loss is the (β-)negative ELBO per image in nats."""

    kind = "vae"
    log_names = ("recon", "kl")  # per image, nats

    def __init__(self, config: AutoencoderConfig):
        config = config if config.variational else replace(config, variational=True)
        super().__init__(config, 2 * config.latent_dim)  # μ and log σ² from one head
        if config.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(1))  # learned, shared by all pixels (see the docstring)

    def posterior(self, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² of q(z|x): each (B, latent), fp32."""
        mu, logvar = self.encoder(x_in).float().chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def nll(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """−log p(x|z) summed over pixels: (B,) nats."""
        if self.config.likelihood == "bernoulli":
            return self.reconstruction_error(out, target).flatten(1).sum(-1)
        log_sigma = self.log_sigma.float().clamp(min=MIN_LOG_SIGMA)
        per_pixel = 0.5 * (out.float() - target) ** 2 * torch.exp(-2 * log_sigma) + log_sigma
        return per_pixel.flatten(1).sum(-1) + 0.5 * math.log(2 * math.pi) * target[0].numel()

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) per image: (B,) nats."""
        return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)

    def elbo_terms(self, images: torch.Tensor, k: int = 1, generator: torch.Generator | None = None):
        """Binarise/corrupt once, then draw k posterior samples. Returns (nll (k, B), kl (B,), log_w (k, B)) where
        log_w = log p(x|z) + log p(z) − log q(z|x) are the importance weights of the IWAE bound."""
        x_in, target = self.prepare(images, generator)
        mu, logvar = self.posterior(x_in)
        std, kl = torch.exp(0.5 * logvar), self.kl(mu, logvar)
        nlls, log_ws = [], []
        for _ in range(k):
            eps = torch.randn(mu.shape, generator=generator, device=mu.device)  # (B, latent)
            z = mu + std * eps
            nll = self.nll(self.decoder(z), target)
            log_pz_over_q = (-0.5 * z ** 2 + 0.5 * eps ** 2 + 0.5 * logvar).sum(-1)  # log N(z; 0, I) − log q(z|x)
            nlls.append(nll)
            log_ws.append(-nll + log_pz_over_q)
        return torch.stack(nlls), kl, torch.stack(log_ws)

    def forward(self, images: torch.Tensor, labels=None) -> ModelOutput:
        nll, kl, _ = self.elbo_terms(images, 1, self._generator(images.device))
        recon = nll[0]  # (B,)
        loss = (recon + self.config.beta * kl).mean()
        return ModelOutput(loss=loss, logs={"recon": recon.mean().detach(), "kl": kl.mean().detach()})

    @torch.no_grad()
    def preview(self, images: torch.Tensor, labels=None, seed: int = 0) -> torch.Tensor:
        """Originals interleaved with reconstructions, then N prior samples: (3N, C, H, W) in [-1, 1]."""
        return torch.cat([super().preview(images, labels, seed), self.sample(len(images), seed)])

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n images decoded from z ~ N(0, I) drawn with a generator seeded `seed`: (n, C, H, W) in [-1, 1]."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=torch.Generator(device=device).manual_seed(seed),
                        device=device)
        return self.decode(z)


def build_autoencoder(config: AutoencoderConfig) -> Autoencoder | VAE:
    """VAE when config.variational, else the plain Autoencoder."""
    return VAE(config) if config.variational else Autoencoder(config)
