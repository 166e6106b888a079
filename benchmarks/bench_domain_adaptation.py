"""Domain adaptation: MNIST (source, labelled) -> scikit-learn's 8×8 digits (target: another hand and scanner).

The target images (1,500 training, 297 test; 8×8 with 17 grey levels) are upsampled to MNIST's 28×28. The same
ResNet (the `mnist` preset of `dlforge train resnet`: small stem, basic blocks 32/64/128) is trained, from the
same random initialisation and for the same number of steps, three ways with `dlforge adapt`:
- source only: the 60,000 labelled MNIST images alone (the target images are ignored);
- DANN: the labelled MNIST images and the unlabelled 8×8 training digits (gradient reversal, λ from 0 to 1);
- target labels (upper bound): the 1,500 labelled 8×8 training digits themselves.
Each is scored on the 297 held-out 8×8 test digits, for three seeds.

    python benchmarks/bench_domain_adaptation.py [--steps 1500] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
from common import emit_json, machine, mnist_dir, print_table

from dlforge.models.resnet import RESNET_PRESETS, ResNet, ResNetConfig
from dlforge.transfer.domain import adapt_domain

DIGITS = "sklearn-digits"
RUNS = [("source only (MNIST)", "source-only", "mnist"), ("DANN (MNIST + unlabelled 8×8)", "dann", "mnist"),
        ("target labels (upper bound)", "source-only", DIGITS)]


def fresh_resnet(seed: int) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(ResNetConfig(**RESNET_PRESETS["mnist"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/domain-adaptation"))
    args = parser.parse_args()
    mnist = mnist_dir(fresh=args.out)
    if mnist is None:
        return 1
    rows, figures = [], {}
    for name, method, source in RUNS:
        accuracies, source_accuracies, minutes = [], [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            out = args.out / f"{method}-{'digits' if source == DIGITS else 'mnist'}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            report = adapt_domain(fresh_resnet(seed), mnist if source == "mnist" else DIGITS, DIGITS, out,
                                  target_eval=DIGITS, method=method, steps=args.steps, lr=args.lr,
                                  batch_size=args.batch_size, seed=seed, progress=False)
            minutes.append((time.perf_counter() - start) / 60)
            accuracies.append(report["target_accuracy"])
            source_accuracies.append(report["source_accuracy"])
            print(name, seed, report["target_accuracy"], flush=True)
        mean = statistics.mean(accuracies)
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        rows.append({"training": name, "target acc (8×8 test)": f"{100 * mean:.1f} ± {100 * spread:.1f} %",
                     "per seed": ", ".join(f"{100 * a:.1f}" for a in accuracies),
                     "source acc": f"{100 * statistics.mean(source_accuracies):.1f} %",
                     "min/run": f"{statistics.mean(minutes):.1f}"})
        figures[name] = {"target_accuracy": [round(a, 4) for a in accuracies], "mean": round(mean, 4),
                         "source_accuracy": [round(a, 4) for a in source_accuracies]}
        print(rows[-1], flush=True)
    print(f"machine: {machine()}; {args.steps} steps, batch {args.batch_size} (+ as many target images for DANN)")
    print_table(rows, list(rows[0]))
    emit_json("domain_adaptation", {"steps": args.steps, "results": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
