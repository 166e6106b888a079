"""The evaluation classifier: a CNN trained by dlforge on MNIST, which the generative benchmarks score samples with.

Trains `dlforge train classifier --preset mnist` (ImageClassifier, width 32: about 0.2 M parameters, random
translations by up to 2 pixels, bf16 autocast) on the 60,000 training images (3,000 held out for validation),
then reports the MNIST test accuracy of the best checkpoint and the floor of the Fréchet distance on its
penultimate features: real training images (10,000) against the real test images (10,000). Generated images
cannot be expected to score below that floor.

    python benchmarks/bench_mnist_classifier.py [--minutes 8] [--out runs/bench/mnist-classifier]

Target: test accuracy >= 99 %. The other image benchmarks load the classifier from --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import emit_json, machine, mnist_dir, print_table

from dlforge.data.images import load_image_set, to_signed_unit
from dlforge.metrics.image_generation import classifier_features, classify, frechet_distance
from dlforge.models import load_pretrained
from dlforge.training.images import train_image_model

DEFAULT_OUT = Path("runs/bench/mnist-classifier")


def real_feature_floor(classifier, mnist: Path, n: int = 10_000) -> tuple[float, torch.Tensor]:
    """(Fréchet distance between n real training and the real test images' features, the test features)."""
    train = load_image_set(mnist, "train")
    test = load_image_set(mnist, "test")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    train_features = classifier_features(classifier, to_signed_unit(train.images[pick]))
    test_features = classifier_features(classifier, to_signed_unit(test.images))
    return frechet_distance(train_features, test_features), test_features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    mnist = mnist_dir(fresh=args.out)
    if mnist is None:
        return 1
    start = time.perf_counter()
    result = train_image_model("classifier", mnist, args.out, preset="mnist", seed=args.seed,
                               overrides={"max_minutes": args.minutes})
    train_minutes = (time.perf_counter() - start) / 60
    classifier, _ = load_pretrained(args.out)
    test = load_image_set(mnist, "test")
    predictions = classify(classifier, to_signed_unit(test.images))
    accuracy = float((predictions == test.labels).double().mean())
    floor, _ = real_feature_floor(classifier, mnist)
    rows = [{"model": "ImageClassifier (mnist preset)", "steps": result["step"], "train min": f"{train_minutes:.1f}",
             "test accuracy": f"{100 * accuracy:.2f} %", "Fréchet real train vs test": f"{floor:.3f}"}]
    print(f"machine: {machine()}")
    print_table(rows, list(rows[0]))
    emit_json("mnist_classifier", {"steps": result["step"], "train_minutes": round(train_minutes, 2),
               "test_accuracy": round(accuracy, 5), "frechet_train_vs_test": round(floor, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
