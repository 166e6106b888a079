"""A denoising U-Net and the diffusion model family built on it (Ho et al., 2020; Dhariwal & Nichol, 2021).

    emb  = MLP(sinusoid(t)) [+ Embed(label)]            time (and class) embedding, (B, E)
    h    = conv_in(x_t)                                  (B, C0, H, W)
    down: per level, `layers_per_block` ResBlocks (+ self-attention at the listed resolutions), then a
          stride-2 conv (except at the last level); every output is kept as a skip
    mid : ResBlock, self-attention, ResBlock             at the lowest resolution
    up  : per level, `layers_per_block + 1` ResBlocks on [h, skip] concatenated, then nearest ×2 + conv
    out = conv_out(SiLU(GroupNorm(h)))                   (B, channels, H, W): ε or v

ResBlock: GroupNorm → SiLU → conv3×3 → GroupNorm · (1 + s) + b → SiLU → dropout → conv3×3, plus the input (1×1
conv when the width changes), where (s, b) = Linear(SiLU(emb)) per channel. The embedding enters after the norm
(ADM's scale-shift norm): added before it, as in the DDPM paper, GroupNorm subtracts its group mean, and with one
channel per group (narrow models) it would cancel the time and class signal completely. The last conv of each
residual branch and the output conv start at zero, so the network starts as (near) identity paths.
MNIST (28×28) with channel_mults (1, 2, 2) runs at 28 → 14 → 7 with attention at 7×7; 32×32 at 32 → 16 → 8.

`DiffusionModel` trains the U-Net with the simple DDPM objective: t ~ U{0..T−1}, ε ~ N(0, I),
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, loss = ‖f(x_t, t, y) − target‖² with target ε or v. For classifier-free guidance
(Ho & Salimans, 2022) labels are replaced by the null class (index num_classes) with probability class_dropout, so
the same network also learns the unconditional model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.sampling import generate
from ..diffusion.schedulers import PREDICTION_TYPES, NoiseScheduler, make_scheduler
from ..diffusion.schedules import BETA_SCHEDULES
from ..errors import DlforgeError
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel


@dataclass
class UNetConfig(ModelConfig):
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional; else an embedding of num_classes + 1 rows (the last is "no label")
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])  # width per level; one halving between
    layers_per_block: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [8, 7])  # side lengths with self-attention
    attention_head_dim: int = 32
    dropout: float = 0.1
    time_embed_mult: int = 4  # time-embedding width = time_embed_mult · base_channels
    norm_groups: int = 32  # GroupNorm groups (the largest divisor of the width up to this)

    def __post_init__(self):
        check_model_config(self, at_least_one=("image_size", "channels", "base_channels", "attention_head_dim",
                                                "norm_groups", "time_embed_mult"))
        self.channel_mults = [int(m) for m in self.channel_mults]  # tuples from Python, lists from JSON
        self.attention_resolutions = [int(r) for r in self.attention_resolutions]
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise DlforgeError(f"channel_mults must be positive integers, got {self.channel_mults}")
        halvings = len(self.channel_mults) - 1
        if self.image_size % (2**halvings):
            raise DlforgeError(f"image_size {self.image_size} cannot be halved {halvings} times: use fewer "
                               f"channel_mults (one halving between each) or another image size")
        sizes = (self.channels, self.base_channels, self.layers_per_block, self.attention_head_dim,
                 self.time_embed_mult, self.norm_groups)
        if min(sizes) < 1 or self.num_classes < 0:
            raise DlforgeError("channels, base_channels, layers_per_block, attention_head_dim, time_embed_mult and "
                               "norm_groups must be >= 1, num_classes >= 0")
        if not 0 <= self.dropout < 1:
            raise DlforgeError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DiffusionConfig(UNetConfig):
    num_train_timesteps: int = 1000
    beta_schedule: str = "cosine"  # linear | cosine
    prediction_type: str = "v_prediction"  # epsilon | v_prediction
    class_dropout: float = 0.1  # probability of training on the null label (classifier-free guidance)

    def __post_init__(self):
        super().__post_init__()
        if self.beta_schedule not in BETA_SCHEDULES:
            raise DlforgeError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise DlforgeError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                               f"got {self.prediction_type!r}")
        if self.num_train_timesteps < 2:
            raise DlforgeError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if not 0 <= self.class_dropout <= 1:
            raise DlforgeError(f"class_dropout must be in [0, 1], got {self.class_dropout}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) [cos(t·ω_i), sin(t·ω_i)] with ω_i = max_period^(−i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch, groups), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)  # per-channel scale and shift
        self.norm2, self.conv2 = group_norm(out_ch, groups), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):  # x: (B, C_in, H, W), emb: (B, E) already through SiLU
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # each (B, C_out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift  # after the norm, which would subtract an added embedding
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, as a residual branch."""

    def __init__(self, channels: int, head_dim: int, groups: int):
        super().__init__()
        heads = max(1, channels // head_dim)
        self.heads = heads if channels % heads == 0 else 1
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        # (B, heads, HW, d) each, made contiguous: the CPU flash-attention kernel needs a unit-stride head dim
        # (a transposed view falls back to the slower bmm-softmax-bmm path)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Layer(nn.Module):
    """A ResBlock, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, c: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, c.dropout, c.norm_groups)
        self.attn = SelfAttention(out_ch, c.attention_head_dim, c.norm_groups) if attention else None

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None):  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None):  # (B, C, H, W) -> (B, C, 2H, 2W)
        # upsampled in channels-last layout and back: the CPU's fp32 nearest kernel on NCHW maps is ~4x slower
        # than the conversion round trip (140 vs 32 ms for 128×128×14×14); channels-last for the whole network
        # instead makes the bf16 convolutions and GroupNorms slower
        x = F.interpolate(x.contiguous(memory_format=torch.channels_last), scale_factor=2.0, mode="nearest")
        return self.conv(x.contiguous())


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch, emb_dim = c.base_channels, c.time_embed_mult * c.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.channels, ch, 3, padding=1)
        attn_at, size, skips = set(c.attention_resolutions), c.image_size, [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mults):
            for _ in range(c.layers_per_block):
                self.down.append(Layer(ch, c.base_channels * mult, emb_dim, c, size in attn_at))
                ch = c.base_channels * mult
                skips.append(ch)
            if level < len(c.channel_mults) - 1:
                self.down.append(Downsample(ch))
                size //= 2
                skips.append(ch)
        self.mid = nn.ModuleList([Layer(ch, ch, emb_dim, c, True), Layer(ch, ch, emb_dim, c, False)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            for _ in range(c.layers_per_block + 1):
                self.up.append(Layer(ch + skips.pop(), c.base_channels * mult, emb_dim, c, size in attn_at))
                ch = c.base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
                size *= 2
        self.norm_out = group_norm(ch, c.norm_groups)
        self.conv_out = nn.Conv2d(ch, c.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, timesteps, labels=None):
        """x: (B, C, H, W); timesteps: (B,) or a scalar; labels: (B,) long (num_classes = no label) or None."""
        B = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(B)  # (B,)
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, E)
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full((B,), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(labels)
        emb = F.silu(emb)  # every block's projection starts with SiLU: apply it once
        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = module(h, emb)
            skips.append(h)
        for module in self.mid:
            h = module(h, emb)
        for module in self.up:
            h = module(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(module, Layer) else module(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


class DiffusionModel(PretrainedModel):
    """A U-Net trained to denoise; sample with dlforge.diffusion.sampling (generate, img2img, inpaint, ...)."""

    kind = "diffusion"
    config_class = DiffusionConfig
    log_names: tuple[str, ...] = ()

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config)
        self.schedule = make_scheduler("ddpm", config)  # the training noise schedule (no parameters)

    def noise_scheduler(self, name: str = "ddim", **kwargs) -> NoiseScheduler:
        """A sampling scheduler ("ddpm" | "ddim" | "dpm++") on this model's training schedule."""
        return make_scheduler(name, self.config, **kwargs)

    def predict(self, x, timesteps, labels=None):
        """The network's output (ε or v, per config.prediction_type) for noisy images x at `timesteps`."""
        return self.unet(x, timesteps, labels)

    def forward(self, images, labels=None) -> ModelOutput:
        c = self.config
        B, device = images.shape[0], images.device
        # eval: a fixed local generator, so the validation loss is deterministic and leaves the global RNG alone
        gen = None if self.training else torch.Generator(device=device).manual_seed(0)
        t = torch.randint(0, c.num_train_timesteps, (B,), device=device, generator=gen)  # (B,)
        noise = torch.randn(images.shape, device=device, dtype=images.dtype, generator=gen)
        x_t = self.schedule.add_noise(images, noise, t)
        if c.num_classes:
            null = torch.full((B,), c.num_classes, dtype=torch.long, device=device)
            if labels is None:
                labels = null
            elif self.training and c.class_dropout > 0:
                labels = torch.where(torch.rand(B, device=device) < c.class_dropout, null, labels)
        else:
            labels = None  # an unconditional model ignores labels the data may carry
        pred = self.unet(x_t, t, labels)
        target = self.schedule.training_target(images, noise, t)
        return ModelOutput(loss=F.mse_loss(pred.float(), target.float()))

    @property
    def preview_nrow(self) -> int | None:
        return self.config.num_classes or None

    @torch.no_grad()
    def preview(self, images, labels, seed: int) -> torch.Tensor:
        """Samples from seeded noise with 20 DDIM steps: 16 images, or (when conditional) labels cycling 0..K−1
        (K·⌈32/K⌉ images, at most 64: one class per column of a K-wide grid) with guidance scale 2.
        (N, C, H, W) in [-1, 1]."""
        k = self.config.num_classes
        if not k:
            return generate(self, 16, steps=20, scheduler="ddim", seed=seed)
        n = min(64, k * math.ceil(32 / k))
        return generate(self, n, steps=20, scheduler="ddim", labels=torch.arange(n) % k, guidance_scale=2.0,
                        seed=seed)
