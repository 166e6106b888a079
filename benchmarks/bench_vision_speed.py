"""Vision backbone speed: ViT-B/16 and ResNet-50 forward passes, dlforge vs transformers, in the same run.

Both sides hold the same weights: a random-init transformers `ViTModel` (google/vit-base-patch16-224's shape, no
pooler) and `ResNetModel` (microsoft/resnet-50's shape) are saved with `save_pretrained` and loaded into dlforge
through `dlforge.models.load_pretrained`; the outputs are compared before timing (final hidden states for ViT, pooled
features for ResNet). Timed: one forward of a batch of 8 images at 224×224 under `torch.no_grad()` (best of 10
alternating rounds after 2 warm-ups), in fp32 and in bf16 autocast, dlforge's `encode` (ViT) / `features`
(ResNet) against the transformers model's forward.

    python benchmarks/bench_vision_speed.py [--batch 8] [--repeats 5]

Target: dlforge not slower (ratio = transformers time / dlforge time >= 1) in every row.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

import torch
from common import best_time, emit_json, machine, print_table

from dlforge.models import load_pretrained


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def hf_vit(folder: str):
    from transformers import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072), add_pooling_layer=False)
    model.save_pretrained(folder)
    return model.eval(), lambda x: model(pixel_values=x).last_hidden_state


def hf_resnet(folder: str):
    from transformers import ResNetConfig, ResNetModel

    model = ResNetModel(ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                                     layer_type="bottleneck", downsample_in_first_stage=False))
    with torch.no_grad():  # random BatchNorm statistics, so the parity check can fail
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return model.eval(), lambda x: model(pixel_values=x).pooler_output.flatten(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    rows, figures = [], {}
    for name, build, ours_fn in (("ViT-B/16", hf_vit, "encode"), ("ResNet-50", hf_resnet, "features")):
        with tempfile.TemporaryDirectory() as folder:
            reference, reference_forward = build(folder)
            model, _ = load_pretrained(folder)
        forward = getattr(model.eval(), ours_fn)
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            expected = reference_forward(x)
            diff = (forward(x) - expected).abs().max().item()
            relative = diff / expected.abs().max().item()  # convolution algorithms differ by layout: compare to scale
        for precision in ("fp32", "bf16"):
            def timed(fn, precision=precision, repeats=1, warmup=0):
                def call():
                    with torch.no_grad(), autocast(precision):
                        fn(x)
                return best_time(call, repeats, warmup=warmup)

            timed(forward, warmup=2), timed(reference_forward, warmup=2)
            # alternate the two, one call each per round, so a drift of the shared machine hits both alike
            rounds = [(timed(forward), timed(reference_forward)) for _ in range(args.repeats)]
            ours, theirs = min(r[0] for r in rounds), min(r[1] for r in rounds)
            key = f"{name} {precision}"
            rows.append({"model": name, "precision": precision, "params (M)": f"{params / 1e6:.1f}",
                         "max |diff| fp32": f"{diff:.1e}", "relative": f"{relative:.1e}",
                         "dlforge ms": f"{ours * 1e3:.0f}",
                         "transformers ms": f"{theirs * 1e3:.0f}", "ratio": f"{theirs / ours:.2f}"})
            figures[key] = {"dlforge_s": round(ours, 4), "transformers_s": round(theirs, 4),
                            "ratio": round(theirs / ours, 3), "max_abs_diff": diff,
                            "max_relative_diff": relative}
            print(rows[-1], flush=True)
        del reference, model
    print(f"machine: {machine()}; batch {args.batch} at 224×224, forward only, best of {args.repeats}")
    print_table(rows, list(rows[0]))
    emit_json("vision_speed", {"batch": args.batch, "results": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
