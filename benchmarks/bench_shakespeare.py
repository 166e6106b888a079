"""Quality: a character-level GPT, validation loss reached in a wall-clock budget, on two corpora.

Corpora (first 90 % of the characters for training, the rest for validation), from ../shared/data (or
$DLFORGE_DATA): `shakespeare`, tiny Shakespeare (the corpus the preset was tuned on), and `wikipedia`, the 2,067
distinct paragraphs of the SQuAD v1.1 dev set (48 Wikipedia articles, 1.6 M characters), a second corpus the
preset never saw. Runs, in the same process:
  1. the reference: nanoGPT's documented CPU recipe (preset `baby`: 4 layers, 128 wide, context 64, batch 12),
     for its 2000 iterations (`--reference steps`) and/or for the same --minutes as ours (`--reference minutes`,
     the default: the baseline a time-budgeted recipe must beat), and
  2. dlforge's preset `shakespeare` for --minutes of training (default 5).
The final validation loss of each is the mean over 200 random validation windows (nanoGPT's
estimate_loss) at the model's own context length.

    python benchmarks/bench_shakespeare.py [--minutes 5] [--corpus shakespeare wikipedia] [--reference minutes]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit_json, print_table, shared_data_dir

from dlforge.data import TextBatches, open_token_file
from dlforge.models import load_pretrained
from dlforge.training.lm import PRESETS, train_language_model


@torch.no_grad()
def final_val_loss(run_dir: Path, n_batches: int = 200, batch_size: int = 32) -> float:
    model, _ = load_pretrained(run_dir)
    ids = open_token_file(run_dir / "data" / "tokens.bin")
    batches = TextBatches(ids, model.config.block_size, batch_size, seed=12345, eval_batches=n_batches)
    losses = []
    for batch in batches.eval_batches():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(model(**batch).loss.item())
    return float(np.mean(losses))


def run(name: str, preset: str, data: Path, out: Path, overrides: dict) -> dict:
    start = time.perf_counter()
    result = train_language_model(data, out, preset=preset, overrides=overrides, seed=1337, progress=False)
    wall = time.perf_counter() - start
    with open(out / "metrics.csv") as f:
        header, *rows = [line.rstrip("\n").split(",") for line in f]
    lrs = [float(r[header.index("lr")]) for r in rows if r[header.index("lr")]]
    evals = sum(1 for r in rows if r[header.index("val_loss")])
    return {"run": name, "steps": result["step"], "train_s": result["elapsed_s"], "wall_s": wall,
            "first_lr": lrs[0], "peak_lr": max(lrs), "last_lr": lrs[-1], "evaluations": evals,
            "val_loss": final_val_loss(out)}


def corpus_file(name: str, data_dir: Path, tmp: Path) -> Path | None:
    if name == "shakespeare":
        path = data_dir / "text" / "tinyshakespeare.txt"
        return path if path.is_file() else None
    squad = data_dir / "squad" / "dev-v1.1.reconstructed.json"
    if not squad.is_file():
        return None
    articles = json.loads(squad.read_text(encoding="utf-8"))["data"]
    paragraphs = dict.fromkeys(p["context"] for a in articles for p in a["paragraphs"])  # distinct, in order
    path = tmp / "wikipedia.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--corpus", nargs="+", default=["shakespeare", "wikipedia"],
                        choices=["shakespeare", "wikipedia"])
    parser.add_argument("--reference", nargs="*", default=["minutes"], choices=["steps", "minutes"],
                        help="the baby recipe for its 2000 iterations and/or for the same --minutes (none: skip)")
    parser.add_argument("--set", action="append", default=[], help="overrides for the dlforge preset")
    args = parser.parse_args()
    data_dir = shared_data_dir()
    if data_dir is None:
        print("skipped: shared data not found (set DLFORGE_DATA or put shared/data beside the repo)")
        sys.exit(0)
    from dlforge.settings import parse_overrides
    from dlforge.training.lm import field_types

    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpus:
            text = corpus_file(corpus, data_dir, Path(tmp))
            if text is None:
                print(f"skipped: corpus {corpus} not found under {data_dir}")
                continue
            plans = [(f"{corpus}: baby, 2000 iterations", "baby", {"eval_interval": 2000})
                     for _ in args.reference if _ == "steps"]
            # the baby recipe for the whole budget: its step cap lifted, so the time budget sets its length
            plans += [(f"{corpus}: baby, {args.minutes:g} min", "baby", {"max_minutes": args.minutes,
                                                                          "max_steps": 1_000_000})
                      for _ in args.reference if _ == "minutes"]
            plans.append((f"{corpus}: {args.preset}, {args.minutes:g} min", args.preset,
                          {"max_minutes": args.minutes, **parse_overrides(args.set, field_types())}))
            for i, (name, preset, overrides) in enumerate(plans):
                rows.append(run(name, preset, text, Path(tmp) / f"{corpus}-{i}", overrides))
                print_table(rows[-1:], list(rows[-1].keys()))
                figures[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()
                                 if k != "run"}
    print()
    print_table(rows, list(rows[0].keys()))
    print(f"preset {args.preset}: {PRESETS[args.preset]} {args.set}; baby: {PRESETS['baby']}")
    emit_json("shakespeare_char", figures)


if __name__ == "__main__":
    main()
