"""Generative models on MNIST: a class-conditional diffusion model and a VAE, then the image tasks.

    .venv/bin/python examples/generate_images.py                # 10 + 3 minutes of training on a 2-core CPU
    .venv/bin/python examples/generate_images.py --minutes 45   # the benchmarked diffusion recipe
    .venv/bin/python examples/generate_images.py --steps 20     # a quick look (untrained)

Reads ../shared/data/mnist (or $DLFORGE_DATA/mnist). Writes under --out (default runs/example-images): the two
run folders (checkpoints, metrics.csv, loss.png, samples/) and
  digits.png      one row per digit, DDIM 50 steps with classifier-free guidance
  dpm.png         the same with DPM-Solver++ 2M in 20 steps
  img2img.png     test digits re-imagined at strength 0.5
  inpaint.png     test digits with the lower half regenerated (RePaint, 5 resamplings)
  outpaint.png    test digits shrunk into a wider canvas and extended
  strip.png       forward noising and reverse denoising of one digit
  vae.png         VAE reconstructions and prior samples; interpolation.png between two test digits
The same steps on the command line: `dlforge train diffusion|vae`, `dlforge sample`, `dlforge img2img`,
`dlforge inpaint`, `dlforge outpaint`, `dlforge noise-strip` (see the README).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

import dlforge
from dlforge.data.images import load_image_set, save_grid, to_signed_unit
from dlforge.diffusion.sampling import img2img, inpaint, outpaint, process_strip
from dlforge.models import load_pretrained
from dlforge.models.autoencoder_tools import interpolate
from dlforge.pipelines.image_generation import inference_precision
from dlforge.training.images import train_image_model


def find_data() -> Path:
    env = os.environ.get("DLFORGE_DATA")
    for path in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1].parent / "shared" / "data"]:
        if (path / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return path / "mnist"
    sys.exit("MNIST not found: set DLFORGE_DATA to the folder holding mnist/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="diffusion training budget (the VAE gets 3)")
    parser.add_argument("--steps", type=int, help="train each model this many steps instead of --minutes")
    parser.add_argument("--out", default="runs/example-images")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    args = parser.parse_args()
    mnist, out = find_data(), Path(args.out)
    for run in ("diffusion", "vae"):
        if (out / run).exists():
            shutil.rmtree(out / run)  # the example starts afresh; `dlforge train ... --resume` continues a run

    # 1. train: the diffusion model learns digits with their labels (and without, for guidance)
    budget = {"max_steps": args.steps} if args.steps else {"max_minutes": args.minutes}
    train_image_model("diffusion", mnist, out / "diffusion", overrides=budget)
    vae_budget = {"max_steps": args.steps} if args.steps else {"max_minutes": 3.0}
    train_image_model("vae", mnist, out / "vae", overrides=vae_budget)

    # 2. sample: ten of each digit, with DDIM and with DPM-Solver++ (the pipeline takes class names)
    generate = dlforge.pipeline("image-generation", model=out / "diffusion")
    rows = [str(d) for d in range(10) for _ in range(10)]
    save_grid(generate(100, label=rows, steps=50, scheduler="ddim", guidance_scale=args.guidance, seed=0),
              out / "digits.png", nrow=10, scale=2)
    save_grid(generate(100, label=rows, steps=20, scheduler="dpm++", guidance_scale=args.guidance, seed=0),
              out / "dpm.png", nrow=10, scale=2)
    print(f"samples: {out / 'digits.png'}, {out / 'dpm.png'}")

    # 3. the image tasks on real test digits
    model, _ = load_pretrained(out / "diffusion")
    test = load_image_set(mnist, "test")
    images, labels = to_signed_unit(test.images[:8]), test.labels[:8]
    mask = torch.zeros(8, 1, 28, 28)
    mask[..., 14:, :] = 1.0  # white = regenerate: the lower half
    with inference_precision(model):  # bf16 autocast on the CPU
        varied = img2img(model, images, strength=0.5, labels=labels, guidance_scale=args.guidance, seed=0)
        filled = inpaint(model, images, mask, resample=5, labels=labels, guidance_scale=args.guidance, seed=0)
        wider = outpaint(model, images, pad=5, labels=labels, guidance_scale=args.guidance, seed=0)
        process_strip(model, images[0], out / "strip.png", labels=labels[:1], guidance_scale=args.guidance)
    for name, result in (("img2img", varied), ("inpaint", filled), ("outpaint", wider)):
        save_grid(torch.cat([images, result]), out / f"{name}.png", nrow=8, scale=2)  # inputs above, results below
    print(f"img2img, inpainting, outpainting: {out / 'img2img.png'}, {out / 'inpaint.png'}, {out / 'outpaint.png'}")

    # 4. the VAE: reconstructions, prior samples, a walk through its latent space
    vae, _ = load_pretrained(out / "vae")
    save_grid(vae.preview(images, None, seed=0), out / "vae.png", nrow=8, scale=2)
    save_grid(interpolate(vae, images[0], images[1], steps=10), out / "interpolation.png", nrow=10, scale=2)
    print(f"VAE: {out / 'vae.png'}, {out / 'interpolation.png'}")


if __name__ == "__main__":
    main()
