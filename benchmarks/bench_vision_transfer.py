"""Few-label transfer on MNIST: backbones pretrained on digits 0-4 learn digits 5-9 from 10 or 100 labels per class.

1. Pretrain `dlforge train resnet|vit --preset mnist --set only_classes=0,1,2,3,4` on the 30,596 training images
   of digits 0-4 (all labels), within a wall-clock budget each.
2. For 10 and 100 labelled training images per class of digits 5-9 (`--option per_class=N`, three different
   draws: sample_seed 0, 1, 2), with each backbone:
   - from scratch: the same architecture, randomly initialised, trained on the few labels (method full);
   - feature extraction: the pretrained backbone frozen, a new linear head on its pooled features;
   - fine-tuning: every weight of the pretrained backbone trains, with a new head (method full).
   Each `dlforge finetune --task image-classification` run takes the same number of steps (batch 32, warmup 10 %,
   cosine decay, bf16 autocast, random translations by up to 2 pixels, and with --rotate / --scale random rotations
   and zooms, except for feature extraction) and is scored on all 4,861 test images of digits 5-9 (the last
   weights: no checkpoint is picked on the test images).

    python benchmarks/bench_vision_transfer.py [--resnet-minutes 4] [--vit-minutes 10] [--steps 300]
    python benchmarks/bench_vision_transfer.py --backbones vit --vit-set rotate=15 --vit-set scale=0.1 \
        --steps 1500 --rotate 15 --scale 0.1     # the ViT recipe of RESULTS.md §19 (2026-12-02)
    python benchmarks/bench_vision_transfer.py --backbones vit-teacher --vit-set rotate=15 --vit-set scale=0.1 \
        --steps 1500 --rotate 15 --scale 0.1     # the same, pretrained with the ResNet as feature-map teacher

Target: fine-tuning with 10 labels per class >= 90 % test accuracy, while training from scratch stays far below.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import emit_json, machine, mnist_dir, print_table

from dlforge.models import load_pretrained, save_pretrained
from dlforge.settings import parse_overrides
from dlforge.training.images import field_types, train_image_model
from dlforge.transfer.recipe import finetune

TARGET = "5,6,7,8,9"
# (approach, method, learning rate): Adam-family rates that suit each kind of run
APPROACHES = {
    "resnet": [("from scratch", "full", 2e-3), ("feature extraction", "features", 1e-2), ("fine-tuning", "full", 1e-3)],
    "vit": [("from scratch", "full", 1e-3), ("feature extraction", "features", 1e-2), ("fine-tuning", "full", 1e-3)],
}


def pretrain(kind: str, mnist: Path, out: Path, minutes: float, seed: int, overrides: dict,
             teacher: Path | None = None) -> float:
    """Train the backbone on digits 0-4 (the mnist preset + `overrides`, with a teacher's feature map for a ViT
    when given); returns its validation accuracy."""
    if not (out / "run.json").is_file():
        train_image_model(kind, mnist, out, preset="mnist", seed=seed, teacher=teacher,
                          overrides={**overrides, "only_classes": "0,1,2,3,4", "max_minutes": minutes})
    rows = (out / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("val_accuracy")
    return max(float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column])


def random_twin(run: Path, out: Path) -> Path:
    """The backbone's architecture with fresh random weights, as a model folder (the from-scratch baseline)."""
    model, _ = load_pretrained(run)
    torch.manual_seed(0)
    save_pretrained(type(model)(replace(model.config)), out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet-minutes", type=float, default=4.0, help="pretraining budget of the ResNet")
    parser.add_argument("--vit-minutes", type=float, default=10.0, help="pretraining budget of the ViT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--per-class", default="10,100")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--crop-padding", type=int, default=2,
                        help="random translations of the few training images (not for feature extraction)")
    parser.add_argument("--rotate", type=float, default=0.0,
                        help="random rotations (degrees) of the few training images (not for feature extraction)")
    parser.add_argument("--scale", type=float, default=0.0,
                        help="random zooms (e.g. 0.1: 0.9-1.1) of the few training images (not for feature extraction)")
    parser.add_argument("--backbones", default="resnet,vit",
                        help="comma-separated: resnet, vit, vit-teacher (a ViT pretrained with the ResNet backbone "
                             "as its feature-map teacher, `dlforge train vit --teacher`)")
    parser.add_argument("--approaches", default=",".join(a for a, _, _ in APPROACHES["vit"]),
                        help="comma-separated subset of the approaches (default: all three)")
    parser.add_argument("--resnet-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the ResNet's mnist preset (as `dlforge train resnet --set`)")
    parser.add_argument("--vit-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the ViT's mnist preset, e.g. pooling=mean")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/vision-transfer"))
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--fresh", action="store_true", help="pretrain again even if --out holds the backbones")
    args = parser.parse_args()
    mnist = mnist_dir(fresh=args.out if args.fresh else None)
    if mnist is None:
        return 1
    rows, figures = [], {}
    augmentation = {"crop_padding": args.crop_padding, "rotate": args.rotate, "scale": args.scale}
    approaches = args.approaches.split(",")
    unknown = set(approaches) - {a for a, _, _ in APPROACHES["vit"]}
    if unknown:
        parser.error(f"unknown approaches {sorted(unknown)}: choose from scratch, feature extraction, fine-tuning")
    for kind in args.backbones.split(","):
        if kind not in ("resnet", "vit", "vit-teacher"):
            parser.error(f"unknown backbone {kind!r}: choose resnet, vit or vit-teacher")
        family = "resnet" if kind == "resnet" else "vit"
        teacher = None
        if kind == "vit-teacher":  # the ResNet backbone of this output folder, pretrained first if absent
            teacher = args.out / "resnet-digits-0-4"
            pretrain("resnet", mnist, teacher, args.resnet_minutes, args.seed,
                     parse_overrides(args.resnet_set, field_types("resnet")))
        start = time.perf_counter()
        backbone = args.out / f"{kind}-digits-0-4"
        minutes = args.resnet_minutes if kind == "resnet" else args.vit_minutes
        overrides = parse_overrides(getattr(args, f"{family}_set"), field_types(family))
        pretrain_accuracy = pretrain(family, mnist, backbone, minutes, args.seed, overrides, teacher)
        pretrain_minutes = (time.perf_counter() - start) / 60
        scratch = random_twin(backbone, args.out / f"{kind}-random")
        print(f"{kind}: pretrained on digits 0-4, val accuracy {pretrain_accuracy:.4f} "
              f"({pretrain_minutes:.1f} min)", flush=True)
        settings = json.loads((backbone / "run.json").read_text())  # a reused backbone keeps its own settings
        figures[kind] = {"pretrain_val_accuracy": pretrain_accuracy, "pretrain_minutes": round(pretrain_minutes, 2),
                         "backbone_data_settings": settings["data_settings"],
                         "backbone_teacher": settings.get("teacher")}
        for per_class in (int(n) for n in args.per_class.split(",")):
            for approach, method, lr in APPROACHES[family]:
                if approach not in approaches:
                    continue
                accuracies, seconds = [], []
                for draw in range(args.draws):
                    out = args.out / "runs" / f"{kind}-{per_class}-{method}-{approach[:4]}-{draw}"
                    shutil.rmtree(out, ignore_errors=True)
                    report = finetune(scratch if approach == "from scratch" else backbone, "image-classification",
                                      mnist, mnist, out=out, method=method, max_steps=args.steps, batch_size=32,
                                      lr=lr, warmup_ratio=0.1, eval_interval=args.steps, load_best=False,
                                      seed=args.seed,
                                      precision="bf16", progress=False,
                                      options={"classes": TARGET, "per_class": per_class, "sample_seed": draw,
                                               **({} if method == "features" else augmentation)})
                    accuracies.append(report["accuracy"])
                    seconds.append(report["timing"]["total_s"])
                mean = statistics.mean(accuracies)
                spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
                rows.append({"backbone": kind, "labels/class": per_class, "approach": approach, "lr": f"{lr:g}",
                             "test acc 5-9": f"{100 * mean:.2f} ± {100 * spread:.2f} %",
                             "s/run": f"{statistics.mean(seconds):.0f}"})
                figures[kind][f"{per_class}/{approach}"] = {"accuracy": [round(a, 4) for a in accuracies],
                                                            "mean": round(mean, 4)}
                print(rows[-1], flush=True)
    print(f"machine: {machine()}; {args.steps} steps of 32 per run, {args.draws} draws of the labelled images")
    print_table(rows, list(rows[0]))
    emit_json("vision_transfer", {"steps": args.steps, "draws": args.draws, "augmentation": augmentation,
                                  "results": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
