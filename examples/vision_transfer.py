"""Transfer learning for images on MNIST: pretrain on digits 0-4, learn 5-9 from 10 labels each, adapt to 8×8 digits.

    .venv/bin/python examples/vision_transfer.py              # about 8 minutes on a 2-core CPU
    .venv/bin/python examples/vision_transfer.py --steps 20   # a quick look (barely trained)
    .venv/bin/python examples/vision_transfer.py --vit        # also a ViT taught by the ResNet (+ about 12 minutes)

Reads ../shared/data/mnist (or $DLFORGE_DATA/mnist). Writes under --out (default runs/example-vision):
  resnet-0-4/     a ResNet trained on digits 0-4 only (`dlforge train resnet --set only_classes=0,1,2,3,4`)
  lr/             the learning-rate range test of the fine-tuning run below (lr_find.png)
  few-features/   a linear head on the frozen backbone's features, from 10 labelled images per digit 5-9
  few-full/       the whole backbone fine-tuned on the same 50 images; report.json, confusion_matrix.png
  dann/           the backbone adapted from MNIST to scikit-learn's 8×8 digits without their labels
  vit-0-4/, vit-few/  with --vit: a ViT trained on digits 0-4 whose patch tokens also learn the ResNet's feature
                  map (`dlforge train vit --teacher`), then fine-tuned on the same 50 images with rotations and zooms
One run on the 2-core CPU (2026-12-01, Intel, about 5 minutes) printed: lr-find suggests 5.0e-03; 10 labels per
class, features 86.7 %, full 95.5 % on digits 5-9; DANN from the digits-0-4 backbone, 600 steps: 97.6 % on MNIST and
51.9 % on the 8×8 digits. With --vit (2026-12-02, AMD, 17 minutes in all): features 87.0 %, full 96.0 %, the ViT
taught by the ResNet 92.9 %; DANN 97.7 % and 64.3 %. RESULTS.md §19-20 has the benchmarked versions.
The same steps on the command line: `dlforge train resnet`, `dlforge lr-find`, `dlforge finetune --task
image-classification`, `dlforge pipeline image-classification`, `dlforge adapt` (see the README).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import dlforge
from dlforge.data.images import load_image_set, write_image
from dlforge.training.images import train_image_model
from dlforge.transfer import adapt_domain, find_learning_rate, finetune

FEW = {"classes": "5,6,7,8,9", "per_class": 10}  # the new task: digits 5-9, ten labelled images of each


def find_data() -> Path:
    env = os.environ.get("DLFORGE_DATA")
    for path in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1].parent / "shared" / "data"]:
        if (path / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return path / "mnist"
    sys.exit("MNIST not found: set DLFORGE_DATA to the folder holding mnist/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="pretraining budget of the backbone")
    parser.add_argument("--steps", type=int, help="train every stage this many steps instead (a quick look)")
    parser.add_argument("--out", default="runs/example-vision")
    parser.add_argument("--vit", action="store_true", help="also pretrain a ViT with the ResNet as its teacher")
    args = parser.parse_args()
    mnist, out = find_data(), Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # the example starts afresh; every command also takes --resume

    # 1. a backbone that knows digits 0-4 (all 30,596 labelled training images of them)
    budget = {"max_steps": args.steps} if args.steps else {"max_minutes": args.minutes}
    train_image_model("resnet", mnist, out / "resnet-0-4", preset="mnist",
                      overrides={"only_classes": "0,1,2,3,4", **budget})
    backbone = out / "resnet-0-4"

    # 2. how fast to fine-tune: the learning-rate range test on the few-label run
    found = find_learning_rate(backbone, "image-classification", mnist, out / "lr", min_lr=1e-6, max_lr=1,
                               steps=args.steps or 100, options=FEW, progress=False)
    print(f"lr-find suggests {found['suggestion']:.2e} (plot: {found['plot']})" if found["suggestion"]
          else "lr-find: the loss never fell")

    # 3. digits 5-9 from ten labels each: a head on frozen features, then the whole network
    steps = args.steps or 300
    for method, lr in (("features", 1e-2), ("full", 1e-3)):
        report = finetune(backbone, "image-classification", mnist, mnist, out=out / f"few-{method}", method=method,
                          lr=lr, max_steps=steps, eval_interval=steps, load_best=False, options=FEW, progress=False)
        print(f"10 labels per class, {method}: test accuracy on digits 5-9 {report['accuracy']:.4f}")

    # 3b. a Vision Transformer learns transferable features when a CNN teaches it (RESULTS.md §19): its patch tokens
    # predict the ResNet's feature map while it learns digits 0-4; then it is fine-tuned as the ResNet was, with the
    # longer, augmented schedule a ViT wants with 10 labels per class
    if args.vit:
        vit_budget = {"max_steps": args.steps} if args.steps else {"max_minutes": 10.0}
        train_image_model("vit", mnist, out / "vit-0-4", preset="mnist", teacher=backbone,
                          overrides={"only_classes": "0,1,2,3,4", "rotate": 15.0, "scale": 0.1, **vit_budget})
        vit_steps = args.steps or 1500
        report = finetune(out / "vit-0-4", "image-classification", mnist, mnist, out=out / "vit-few", method="full",
                          lr=1e-3, max_steps=vit_steps, eval_interval=vit_steps, load_best=False, progress=False,
                          options={**FEW, "crop_padding": 2, "rotate": 15.0, "scale": 0.1})
        print(f"10 labels per class, ViT taught by the ResNet, full: test accuracy on digits 5-9 "
              f"{report['accuracy']:.4f}")

    # 4. the fine-tuned model as a pipeline, on image files
    test = load_image_set(mnist, "test")
    pictures = []
    for i in range(3):
        index = int((test.labels == 5 + i).nonzero()[0])
        pictures.append(write_image(test.images[index].float() / 127.5 - 1, out / "pictures" / f"{5 + i}.png"))
    classify = dlforge.pipeline("image-classification", model=out / "few-full" / "model")
    for path, ranked in zip(pictures, classify([str(p) for p in pictures], top_k=2)):
        print(f"{path.name}: " + ", ".join(f"{r['label']} {r['score']:.2f}" for r in ranked))

    # 5. domain adaptation: MNIST -> 8×8 scikit-learn digits (upsampled), without the target labels
    report = adapt_domain(backbone, mnist, "sklearn-digits", out / "dann", method="dann", steps=args.steps or 600,
                          progress=False)
    print(f"DANN: MNIST accuracy {report['source_accuracy']:.4f}, 8x8-digit accuracy {report['target_accuracy']:.4f}")


if __name__ == "__main__":
    main()
