"""Quality: character-level tiny Shakespeare, validation loss reached in a wall-clock budget.

Uses the published split (first 90 % of the characters for training, the rest for validation)
from ../shared/data/text/tinyshakespeare.txt (or $DLFORGE_DATA). Runs, in the same process:
  1. the reference: nanoGPT's documented CPU recipe (preset `baby`: 4 layers, 128 wide,
     context 64, batch 12, 2000 iterations), and
  2. dlforge's preset `shakespeare` for --minutes of training (default 5).
The final validation loss of each is the mean over 200 random validation windows (nanoGPT's
estimate_loss) at the model's own context length.

    python benchmarks/bench_shakespeare.py [--minutes 5] [--skip-reference]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit_json, print_table, shared_data_dir

from dlforge.data import TextBatches, open_token_file
from dlforge.hub import load_pretrained
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


def run(preset: str, data: Path, out: Path, overrides: dict) -> dict:
    start = time.perf_counter()
    result = train_language_model(data, out, preset=preset, overrides=overrides, seed=1337, progress=False)
    wall = time.perf_counter() - start
    return {"preset": preset, "steps": result["step"], "train_s": result["elapsed_s"], "wall_s": wall,
            "val_loss": final_val_loss(out)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--preset", default="shakespeare")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="overrides for the dlforge preset")
    args = parser.parse_args()
    data_dir = shared_data_dir()
    if data_dir is None or not (data_dir / "text" / "tinyshakespeare.txt").is_file():
        print("skipped: tiny Shakespeare not found (set DLFORGE_DATA or put shared/data beside the repo)")
        sys.exit(0)
    text = data_dir / "text" / "tinyshakespeare.txt"
    from dlforge.training.lm import parse_overrides

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_reference:
            rows.append(run("baby", text, Path(tmp) / "baby", {"eval_interval": 2000}))
            print_table(rows[-1:], list(rows[-1].keys()))
        overrides = {"max_minutes": args.minutes, **parse_overrides(args.set)}
        rows.append(run(args.preset, text, Path(tmp) / "ours", overrides))
        print_table(rows[-1:], list(rows[-1].keys()))
    print()
    print_table(rows, list(rows[0].keys()))
    print(f"preset {args.preset}: {PRESETS[args.preset]} {args.set}")
    emit_json("shakespeare_char", {r["preset"]: {k: (round(v, 4) if isinstance(v, float) else v)
                                                 for k, v in r.items()} for r in rows})


if __name__ == "__main__":
    main()
