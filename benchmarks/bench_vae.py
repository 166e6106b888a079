"""VAE on binarised MNIST: test negative ELBO in nats, against the published figure for an MLP VAE (~100 nats).

Trains `dlforge train vae --preset mnist` (MLP 784-512-256-z50 and mirror, Bernoulli decoder, dynamic
binarisation, Adam 1e-3 with cosine decay, bf16 autocast) within a wall-clock budget on 57,000 training images
(3,000 held out), then reports on the 10,000 MNIST test images, binarised once with a fixed seed:
- the negative ELBO (one posterior sample per image, β = 1), in nats per image;
- the importance-weighted NLL estimate with k = 100 samples (a tighter bound on −log p(x)).
Figures: reconstructions + prior samples, and the 2-D PCA latent scatter of test images coloured by digit.

    python benchmarks/bench_vae.py [--minutes 15] [--out runs/bench/vae]

Target: test negative ELBO <= 100 nats within 15 minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import emit_json, machine, mnist_dir, print_table

from dlforge.data.images import load_image_set, save_grid, to_signed_unit
from dlforge.models import load_pretrained
from dlforge.models.autoencoder_tools import importance_weighted_nll, latent_scatter, negative_elbo
from dlforge.training.images import train_image_model

FIGURES = Path(__file__).resolve().parent / "figures"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/vae"))
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    mnist = mnist_dir(fresh=args.out)
    if mnist is None:
        return 1
    from dlforge.settings import parse_overrides
    from dlforge.training.images import field_types

    overrides = {"max_minutes": args.minutes, **parse_overrides(args.set, field_types("vae"))}
    start = time.perf_counter()
    result = train_image_model("vae", mnist, args.out, preset="mnist", seed=args.seed, overrides=overrides)
    minutes = (time.perf_counter() - start) / 60
    model, _ = load_pretrained(args.out)
    test = load_image_set(mnist, "test")
    images = to_signed_unit(test.images)
    elbo = negative_elbo(model, images).mean().item()
    iw = importance_weighted_nll(model, images[:2000], k=100).mean().item()
    FIGURES.mkdir(exist_ok=True)
    save_grid(model.preview(images[:32], None, seed=0), FIGURES / "vae_mnist.png", nrow=16, scale=2)
    latent_scatter(model, images[:5000], test.labels[:5000], FIGURES / "vae_latent.png")
    rows = [{"model": "MLP VAE, z=50 (mnist preset)", "steps": result["step"], "train min": f"{minutes:.1f}",
             "test -ELBO (nats)": f"{elbo:.2f}", "IW NLL k=100 (2k imgs)": f"{iw:.2f}", "target": "<= 100"}]
    print(f"machine: {machine()}")
    print_table(rows, list(rows[0]))
    emit_json("vae_mnist", {"steps": result["step"], "train_minutes": round(minutes, 2),
                            "test_negative_elbo_nats": round(elbo, 3), "iw_nll_k100_nats": round(iw, 3)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
