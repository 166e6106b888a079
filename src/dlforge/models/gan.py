"""GAN: a DCGAN generator/discriminator pair (Radford et al., 2016), optionally class-conditional.

    G: z ~ N(0, I) (+ label embedding) → ConvT to base×base → [ConvT ×2 up, BN, ReLU]… → ConvT → tanh
    D: image → Conv ×½ (LeakyReLU 0.2, no BN) → [Conv ×½, BN, LeakyReLU 0.2]… → Conv base×base → logit

The image side is base·2^k with base in 3..7: 28 = 7·2² (MNIST: 7 → 14 → 28), 32 = 4·2³, 64 = 4·2⁴
(exactly DCGAN's 64×64 nets with widths 512-256-128-64), 8 = 4·2. Widths double per stage going down in D
and halve per stage going up in G. Convolutions start N(0, 0.02), BatchNorm gains N(1, 0.02) and shifts 0.
With `spectral_norm` (Miyato et al., 2018) every D layer is spectrally normalised and D has no BatchNorm.

Conditional (num_classes > 0): G concatenates a learned label embedding to z; D is a projection
discriminator (Miyato & Koyama, 2018): logit = ψ(φ(x)) + ⟨embed(y), Σ_spatial φ(x)⟩, where φ(x) is D's last
feature map and ψ its final convolution. Fake samples use the real batch's labels (same class frequencies).

Training with the shared Trainer (one AdamW over all parameters): `forward` returns
loss = d_loss + g_loss with the non-saturating losses (BCE on logits)

    d_loss = BCE(D(x), 1 - smoothing) + BCE(D(G(z).detach()), 0)     → gradients for D only
    g_loss = BCE(D'(G(z)), 1),   D' = D with its parameters detached  → gradients for G only

so each network receives exactly the gradient of its own loss and both take an Adam step at once:
simultaneous gradient descent rather than the alternating updates of the original papers. D' shares D's
modules (torch.func.functional_call with detached parameters), so the BatchNorm/spectral-norm state is common.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

from ..errors import DlforgeError
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel

# The published DCGAN optimiser settings, as Trainer fields (the `train gan` preset uses them).
DCGAN_TRAIN_SETTINGS = dict(lr=2e-4, beta1=0.5, beta2=0.999, weight_decay=0.0, batch_size=128, warmup_steps=0,
                            decay="constant", grad_clip=None)


def up_stages(image_size: int) -> tuple[int, int]:
    """(base, k) with image_size = base·2^k, base in 3..7 and k ≥ 1; raises DlforgeError otherwise."""
    base, k = image_size, 0
    while base % 2 == 0 and base > 7:
        base, k = base // 2, k + 1
    if not (3 <= base <= 7 and k >= 1):
        raise DlforgeError(f"a GAN needs image_size = base·2^k with base 3..7 and k ≥ 1 (e.g. 28, 32, 64), "
                           f"got {image_size}: resize the images")
    return base, k


@dataclass
class GANConfig(ModelConfig):
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional; > 0 = class-conditional G and projection D
    latent_dim: int = 100  # size of z
    g_width: int = 64  # G's width at its last hidden stage (DCGAN's ngf); doubles per stage towards z
    d_width: int = 64  # D's width after its first convolution (DCGAN's ndf); doubles per stage
    label_dim: int = 50  # size of G's label embedding (conditional only)
    spectral_norm: bool = False  # spectral normalisation on every D layer, and no BatchNorm in D
    label_smoothing: float = 0.0  # one-sided: D's target for real images is 1 - label_smoothing

    def __post_init__(self):
        check_model_config(self, at_least_one=("image_size", "channels", "latent_dim", "g_width", "d_width"))
        up_stages(self.image_size)
        for name in ("channels", "latent_dim", "g_width", "d_width", "label_dim"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"GAN {name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise DlforgeError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise DlforgeError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


class Generator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        base, k = up_stages(c.image_size)
        self.label_embedding = nn.Embedding(c.num_classes, c.label_dim) if c.num_classes else None
        width = c.g_width * 2 ** (k - 1)
        in_dim = c.latent_dim + (c.label_dim if c.num_classes else 0)
        # z as a 1×1 map; the first transposed conv is DCGAN's "project and reshape" to base×base
        layers = [nn.ConvTranspose2d(in_dim, width, base, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2),
                       nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, c.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels=None):
        """z: (B, latent_dim); labels: (B,) when conditional. Returns (B, C, H, W) in [-1, 1]."""
        if self.label_embedding is not None:
            z = torch.cat([z, self.label_embedding(labels).to(z.dtype)], dim=1)  # (B, latent + label_dim)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        base, k = up_stages(c.image_size)
        width = c.d_width
        layers = [nn.Conv2d(c.channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BN on the input layer
        for _ in range(k - 1):
            layers.append(nn.Conv2d(width, width * 2, 4, 2, 1, bias=c.spectral_norm))
            if not c.spectral_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            width *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, base, 1, 0)  # ψ: the whole base×base map → one logit
        self.projection = nn.Embedding(c.num_classes, width) if c.num_classes else None

    def forward(self, images, labels=None):
        """images: (B, C, H, W); labels: (B,) when conditional. Returns logits (B,)."""
        h = self.features(images)  # (B, W, base, base)
        logits = self.head(h).flatten()  # (B,)
        if self.projection is not None:
            logits = logits + (self.projection(labels).to(h.dtype) * h.sum(dim=(2, 3))).sum(dim=1)
        return logits


class GAN(PretrainedModel):
    kind = "gan"
    config_class = GANConfig
    log_names = ("d_loss", "g_loss", "d_real", "d_fake")

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = c = config
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)
        self.apply(self._init_weights)
        if c.num_classes:
            # G's class codes start quiet, N(0, 0.1). Codes as loud as z, N(0, 1), made G ignore z: within a few
            # hundred steps every sample of a class was the same image (per-class pixel std over z fell from 0.13
            # to 0.03, on MNIST and on the 8×8 digits, with or without D's projection term); quiet codes keep it
            # near 0.3, as in an unconditional G. tests/models/test_gan.py guards this.
            nn.init.normal_(self.generator.label_embedding.weight, 0.0, 0.1)
            nn.init.normal_(self.discriminator.projection.weight, 0.0, 0.02)  # as small as D's other weights
        if c.spectral_norm:  # after the N(0, 0.02) init; the parametrisation divides by the top singular value
            for module in [m for m in self.discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Embedding))]:
                add_spectral_norm(module)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_latent(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (n, latent_dim), from `generator` when given, else the global RNG."""
        return torch.randn(n, self.config.latent_dim, device=device or self.device, generator=generator)

    def _check_inputs(self, images, labels):
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise DlforgeError(f"this GAN takes images of shape (B, {c.channels}, {c.image_size}, {c.image_size}), "
                               f"got {tuple(images.shape)}")
        if self.conditional and labels is None:
            raise DlforgeError("this GAN is class-conditional (num_classes > 0) but got no labels: "
                               "use labelled data or set num_classes to 0")
        return labels if self.conditional else None

    def forward(self, images, labels=None) -> ModelOutput:
        """images: (B, C, H, W) in [-1, 1]; labels: (B,) class ids (conditional) or None.

        Training mode draws z from the global RNG; eval mode from a local generator seeded with 0 (so the
        validation loss is deterministic)."""
        labels = self._check_inputs(images, labels)
        B = images.shape[0]
        rng = None if self.training else torch.Generator(device=images.device).manual_seed(0)
        z = self.sample_latent(B, images.device, rng)  # (B, latent_dim)
        fake = self.generator(z, labels)  # (B, C, H, W)

        real_logits = self.discriminator(images, labels).float()  # (B,)
        fake_logits = self.discriminator(fake.detach(), labels).float()  # (B,): no gradient into G
        real_target = torch.full_like(real_logits, 1.0 - self.config.label_smoothing)
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, real_target)
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))

        # non-saturating G loss through D with detached parameters: gradient reaches G only
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        g_logits = torch.func.functional_call(self.discriminator, frozen, (fake, labels)).float()  # (B,)
        g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))

        logs = {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(real_logits).mean().detach(),
                "d_fake": torch.sigmoid(fake_logits).mean().detach()}
        return ModelOutput(loss=d_loss + g_loss, logs=logs)

    @torch.no_grad()
    def generate(self, n: int, labels=None, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
        """n samples (n, C, H, W) float32 in [-1, 1] from G in eval mode, z from a generator seeded with `seed`.

        Conditional: labels (n,) class ids, by default 0, 1, …, K-1, 0, 1, … The result does not depend on
        batch_size (z is drawn for all n at once)."""
        device = self.device
        z = self.sample_latent(n, device, torch.Generator(device=device).manual_seed(seed))  # (n, latent_dim)
        if self.conditional:
            labels = (torch.arange(n, device=device) % self.config.num_classes if labels is None
                      else torch.as_tensor(labels, dtype=torch.long, device=device))
            if labels.shape != (n,):
                raise DlforgeError(f"generate needs one label per sample: {n} samples, labels of shape "
                                   f"{tuple(labels.shape)}")
        elif labels is not None:
            raise DlforgeError("this GAN is unconditional (num_classes = 0): generate it without labels")
        was_training = self.generator.training
        self.generator.eval()
        try:
            chunks = [self.generator(z[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                      for i in range(0, n, batch_size)]
        finally:
            self.generator.train(was_training)
        return torch.cat(chunks).float().clamp(-1.0, 1.0)

    @property
    def preview_count(self) -> int:
        """Samples in the preview grid: 64, or whole rows of 0..K-1 when conditional (use nrow=preview_nrow)."""
        k = self.config.num_classes
        return 64 if not k else k * max(1, 64 // k)

    @property
    def preview_nrow(self) -> int:
        return self.config.num_classes or 8

    @torch.no_grad()
    def preview(self, images, labels, seed: int) -> torch.Tensor:
        """G(fixed noise from `seed`): (preview_count, C, H, W) in [-1, 1]; the batch itself is not used.
        Conditional: labels cycle 0..K-1, so a grid with nrow = K shows one class per column."""
        return self.generate(self.preview_count, seed=seed)
