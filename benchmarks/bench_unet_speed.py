"""Diffusion speed: one UNet training step and 50-step DDIM sampling of 64 images, dlforge vs diffusers.

Both sides build the same network for 28×28 MNIST, as the `mnist` preset: widths (64, 128, 128), two residual
blocks per level, scale-shift time embedding, self-attention (head size 32) at 7×7 and in the middle block,
GroupNorm with 32 groups. diffusers: `UNet2DModel(block_out_channels=(64, 128, 128), down_block_types=("DownBlock2D",
"DownBlock2D", "AttnDownBlock2D"), resnet_time_scale_shift="scale_shift", ...)` + `DDIMScheduler`. The parameter
counts are printed so the match can be checked. Measured, in the same run, in fp32 and in bf16 (autocast):
- train step: forward, MSE loss, backward and a fused AdamW step on a batch of 128 (best of 3 after a warm-up);
- sampling: `dlforge.diffusion.sampling.generate(model, 64, steps=50, scheduler="ddim")` against the diffusers loop
  (`scheduler.set_timesteps(50)`; `unet(x, t).sample`; `scheduler.step(...)`), seeded noise on both sides.

    python benchmarks/bench_unet_speed.py [--batch 128] [--samples 64] [--steps 50]

Target: dlforge not slower than diffusers in any row (ratio = diffusers time / dlforge time >= 1).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from common import best_time, emit_json, machine, print_table

from dlforge.diffusion.sampling import generate
from dlforge.models.unet import DiffusionConfig, DiffusionModel


def build_dlforge() -> DiffusionModel:
    config = DiffusionConfig(image_size=28, channels=1, num_classes=0, base_channels=64, channel_mults=[1, 2, 2],
                             layers_per_block=2, attention_resolutions=[7], attention_head_dim=32, dropout=0.0,
                             beta_schedule="linear", prediction_type="epsilon")
    return DiffusionModel(config)


def build_diffusers():
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(64, 128, 128),
                       layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32,
                       norm_num_groups=32, resnet_time_scale_shift="scale_shift", dropout=0.0)
    return unet, DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)


def autocast(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def train_step_fn(forward, params, batch: int, dtype: str):
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 1000, (batch,))
    noise = torch.randn_like(x)

    def step():
        with autocast(dtype):
            loss = F.mse_loss(forward(x, t).float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@torch.no_grad()
def diffusers_sample(unet, scheduler, n: int, steps: int, dtype: str):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=generator)
    scheduler.set_timesteps(steps)
    with autocast(dtype):
        for t in scheduler.timesteps:
            eps = unet(x, t).sample.float()
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = build_dlforge()
    theirs, scheduler = build_diffusers()
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    print(f"machine: {machine()}")
    print(f"parameters: dlforge {n_ours / 1e6:.2f} M, diffusers {n_theirs / 1e6:.2f} M")
    rows, figures = [], {}
    for dtype in ("fp32", "bf16"):
        ours.train()
        theirs.train()
        t_ours = best_time(train_step_fn(lambda x, t: ours.unet(x, t), ours.parameters(), args.batch, dtype),
                           repeats=3, warmup=2)
        t_theirs = best_time(train_step_fn(lambda x, t: theirs(x, t).sample, theirs.parameters(), args.batch, dtype),
                             repeats=3, warmup=2)
        rows.append({"what": f"train step, batch {args.batch}", "dtype": dtype, "dlforge ms": f"{1e3 * t_ours:.0f}",
                     "diffusers ms": f"{1e3 * t_theirs:.0f}", "ratio": f"{t_theirs / t_ours:.2f}x"})
        figures[f"train_step_{dtype}"] = {"dlforge_s": round(t_ours, 4), "diffusers_s": round(t_theirs, 4),
                                          "ratio": round(t_theirs / t_ours, 3)}
        ours.eval()
        theirs.eval()

        def sample_ours(dtype=dtype):
            with autocast(dtype):
                generate(ours, args.samples, steps=args.steps, scheduler="ddim", seed=0, batch_size=args.samples)

        t_ours = best_time(sample_ours, repeats=2, warmup=1)
        t_theirs = best_time(lambda dtype=dtype: diffusers_sample(theirs, scheduler, args.samples, args.steps, dtype),
                             repeats=2, warmup=1)
        rows.append({"what": f"DDIM {args.steps} steps, {args.samples} images", "dtype": dtype,
                     "dlforge ms": f"{1e3 * t_ours:.0f}", "diffusers ms": f"{1e3 * t_theirs:.0f}",
                     "ratio": f"{t_theirs / t_ours:.2f}x"})
        figures[f"ddim_{dtype}"] = {"dlforge_s": round(t_ours, 3), "diffusers_s": round(t_theirs, 3),
                                    "ratio": round(t_theirs / t_ours, 3)}
        print(rows[-2], rows[-1], flush=True)
    print_table(rows, ["what", "dtype", "dlforge ms", "diffusers ms", "ratio"])
    emit_json("unet_speed", {"params_dlforge": n_ours, "params_diffusers": n_theirs, **figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
