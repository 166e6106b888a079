"""Class-conditional generative models on MNIST, scored with dlforge's evaluation classifier.

Trains `dlforge train diffusion --preset mnist` (UNet with classifier-free guidance, EMA) or
`dlforge train gan --preset mnist` (conditional DCGAN, Adam 2e-4, β1 0.5) within a wall-clock budget on
the 60,000 MNIST training images (3,000 held out), then draws `--samples` images, an equal number per digit,
and reports:
- conditional accuracy: the share of samples asked for digit y that the evaluation classifier
  (benchmarks/bench_mnist_classifier.py, >= 99 % test accuracy) assigns to y;
- the Fréchet distance between the classifier's penultimate features of the samples and of the 10,000 real test
  images (NOT the Inception FID; comparable only between runs scored with the same classifier). The same distance
  between 10,000 real training and the real test images is printed as the floor.
Diffusion is sampled with DDIM (50 steps) at several guidance scales and with DPM-Solver++ 2M (20 steps).
Figures (benchmarks/figures): a 10×10 grid (one row per digit), and for diffusion the noising/denoising strip,
an inpainting and an outpainting example.

    python benchmarks/bench_mnist_generative.py --kind diffusion [--minutes 45] [--guidance 1,2,3]
    python benchmarks/bench_mnist_generative.py --kind gan [--minutes 30]

Targets: diffusion >= 95 % conditional accuracy with 50 DDIM steps and with 20 DPM-Solver++ steps at the chosen
guidance scale, in <= 45 minutes of training; DCGAN in <= 30 minutes (figures reported).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from bench_mnist_classifier import DEFAULT_OUT as CLASSIFIER_RUN
from bench_mnist_classifier import real_feature_floor
from common import emit_json, machine, mnist_dir, print_table

from dlforge.data.images import load_image_set, save_grid, to_signed_unit, write_image
from dlforge.metrics.image_generation import evaluate_samples
from dlforge.models import load_pretrained
from dlforge.pipelines.image_generation import sample_images
from dlforge.settings import parse_overrides
from dlforge.training.images import field_types, train_image_model

FIGURES = Path(__file__).resolve().parent / "figures"


def draw(model, n: int, chunk: int = 500, **options) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(n images, the labels asked for, seconds): digits 0..9 in turn, in chunks with seeds 0, 1, ..."""
    labels = torch.arange(n) % 10
    start, parts = time.perf_counter(), []
    for i, first in enumerate(range(0, n, chunk)):
        parts.append(sample_images(model, len(labels[first:first + chunk]), labels=labels[first:first + chunk],
                                   seed=i, **options))
    return torch.cat(parts), labels, time.perf_counter() - start


def diffusion_figures(model, mnist: Path, guidance: float) -> None:
    from dlforge.diffusion.sampling import inpaint, outpaint, process_strip

    test = load_image_set(mnist, "test")
    image, label = to_signed_unit(test.images[:1]), test.labels[:1]  # a 7
    options = dict(labels=label, guidance_scale=guidance, seed=0)
    process_strip(model, image[0], FIGURES / "diffusion_strip.png", steps=50, scheduler="ddim", scale=3, **options)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:, :] = 1.0  # regenerate the lower half
    filled = inpaint(model, image, mask, steps=50, scheduler="ddpm", resample=5, **options)
    extended = outpaint(model, image, pad=5, steps=50, scheduler="ddpm", resample=5, **options)
    masked = torch.where(mask.bool(), torch.zeros_like(image), image)
    save_grid(torch.cat([image, masked, filled, extended]), FIGURES / "diffusion_inpaint_outpaint.png", nrow=4,
              scale=4)
    write_image(image[0], FIGURES / "diffusion_input.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("diffusion", "gan"), required=True)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--guidance", default="1,2,3", help="diffusion: guidance scales tried with DDIM-50")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER_RUN)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-training", action="store_true", help="score the existing run in --out")
    parser.add_argument("--figures-only", action="store_true", help="diffusion: only redraw the figures of --out")
    args = parser.parse_args()
    mnist = mnist_dir()
    if mnist is None:
        return 1
    if not (args.classifier / "run.json").is_file():
        print(f"no evaluation classifier in {args.classifier}: run benchmarks/bench_mnist_classifier.py first",
              file=sys.stderr)
        return 1
    if args.figures_only:
        model, _ = load_pretrained(args.out or Path("runs/bench/diffusion"))
        diffusion_figures(model, mnist, float(args.guidance.split(",")[-1]))
        return 0
    minutes = args.minutes or (45.0 if args.kind == "diffusion" else 30.0)
    out = args.out or Path(f"runs/bench/{args.kind}")
    steps, train_minutes = None, None
    if not args.skip_training:
        if out.exists():
            shutil.rmtree(out)
        overrides = {"max_minutes": minutes, **parse_overrides(args.set, field_types(args.kind))}
        start = time.perf_counter()
        steps = train_image_model(args.kind, mnist, out, preset="mnist", seed=args.seed, overrides=overrides)["step"]
        train_minutes = (time.perf_counter() - start) / 60
    model, _ = load_pretrained(out)
    classifier, _ = load_pretrained(args.classifier)
    floor, test_features = real_feature_floor(classifier, mnist)
    FIGURES.mkdir(exist_ok=True)
    settings = ([(f"DDIM 50, guidance {g}", dict(steps=50, scheduler="ddim", guidance_scale=float(g)))
                 for g in args.guidance.split(",")] if args.kind == "diffusion" else [("DCGAN", {})])
    rows, figures = [], {}

    def score(name: str, options: dict) -> None:
        images, labels, seconds = draw(model, args.samples, **options)
        scores = evaluate_samples(classifier, images, labels, test_features)
        rows.append({"sampler": name, "accuracy": f"{100 * scores['accuracy']:.2f} %",
                     "Fréchet": f"{scores['frechet']:.3f}", "sampling s": f"{seconds:.0f}"})
        figures[name] = {"accuracy": round(scores["accuracy"], 4), "frechet": round(scores["frechet"], 4),
                         "sampling_s": round(seconds, 1), **options}
        print(rows[-1], flush=True)

    for name, options in settings:
        score(name, options)
    if args.kind == "diffusion":  # DPM-Solver++ at the guidance scale with the best DDIM accuracy
        best = max(settings, key=lambda s: figures[s[0]]["accuracy"])[1]["guidance_scale"]
        score(f"DPM-Solver++ 2M 20, guidance {best:g}", dict(steps=20, scheduler="dpm++", guidance_scale=best))
        grid_options = dict(steps=50, scheduler="ddim", guidance_scale=best)
        diffusion_figures(model, mnist, best)
    else:
        grid_options = {}
    grid = sample_images(model, 100, labels=torch.arange(100) // 10, seed=0, **grid_options)
    save_grid(grid, FIGURES / f"{args.kind}_mnist.png", nrow=10, scale=2)
    rows.append({"sampler": "real train vs real test (floor)", "Fréchet": f"{floor:.3f}"})
    print(f"machine: {machine()}; training: {steps} steps in {train_minutes and round(train_minutes, 1)} min")
    print_table(rows, ["sampler", "accuracy", "Fréchet", "sampling s"])
    emit_json(f"{args.kind}_mnist", {"steps": steps, "train_minutes": train_minutes and round(train_minutes, 2),
                                     "samples": args.samples, "frechet_floor": round(floor, 4), "results": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
