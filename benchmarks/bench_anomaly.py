"""One-class anomaly detection on MNIST: each digit in turn is "normal", the other nine are anomalies.

For every split, `dlforge anomaly fit --normal D --preset mnist` trains the convolutional autoencoder (latent 32)
on the training images of digit D alone (5 % held out) for a fixed number of steps, sets the threshold at the
95th percentile of the held-out normal scores, and `dlforge anomaly score` scores all 10,000 MNIST test images
by reconstruction error. Reported per split: ROC-AUC, PR-AUC, and precision / recall / F1 at the threshold.

    python benchmarks/bench_anomaly.py [--steps 600] [--out runs/bench/anomaly]

Target: mean ROC-AUC over the ten splits >= 0.90. (Published reconstruction-error autoencoders reach about
0.90-0.96 mean ROC-AUC in this protocol.) The PR curve of one split goes to benchmarks/figures.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import emit_json, machine, mnist_dir, print_table

from dlforge.settings import parse_overrides
from dlforge.training.anomaly import fit_anomaly_detector, score_anomalies
from dlforge.training.images import field_types

FIGURES = Path(__file__).resolve().parent / "figures"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/anomaly"))
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    mnist = mnist_dir(fresh=args.out)
    if mnist is None:
        return 1
    overrides = {"max_steps": args.steps, **parse_overrides(args.set, field_types("ae"))}
    rows, aucs = [], []
    for digit in args.digits.split(","):
        run = args.out / f"normal-{digit}"
        start = time.perf_counter()
        fit_anomaly_detector(mnist, run, normal=digit, overrides=overrides, seed=args.seed, progress=False)
        minutes = (time.perf_counter() - start) / 60
        report = score_anomalies(run, mnist, run / "test", split="test")
        aucs.append(report["roc_auc"])
        rows.append({"normal digit": digit, "train min": f"{minutes:.2f}", "ROC-AUC": f"{report['roc_auc']:.4f}",
                     "PR-AUC": f"{report['pr_auc']:.4f}", "precision": f"{report['precision']:.3f}",
                     "recall": f"{report['recall']:.3f}", "F1": f"{report['f1']:.3f}"})
        print(rows[-1], flush=True)
        if digit == "3":
            FIGURES.mkdir(exist_ok=True)
            shutil.copyfile(run / "test" / "pr_curve.png", FIGURES / "anomaly_pr_curve_digit3.png")
    mean_auc = sum(aucs) / len(aucs)
    rows.append({"normal digit": "mean", "ROC-AUC": f"{mean_auc:.4f}"})
    print(f"machine: {machine()}")
    print_table(rows, list(rows[0]))
    emit_json("anomaly_mnist", {"steps": args.steps, "roc_auc": [round(a, 4) for a in aucs],
                                "mean_roc_auc": round(mean_auc, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
