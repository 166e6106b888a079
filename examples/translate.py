"""Train a German→English translator on Multi30k, translate with beam search, and look at its attention.

    .venv/bin/python examples/translate.py                    # 10 minutes of training on a 2-core CPU
    .venv/bin/python examples/translate.py --minutes 45       # the benchmarked recipe (40 test BLEU)
    .venv/bin/python examples/translate.py --steps 20         # a quick look (untrained)

Reads ../shared/data/multi30k (or $DLFORGE_DATA/multi30k). Writes the run folder (checkpoints, metrics.csv,
loss.png, eval_scores.json) and attention.png under --out (default runs/example-translate). The same steps on the
command line: `dlforge train seq2seq`, `dlforge pipeline translation`, `dlforge attention` (see the README).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import dlforge
from dlforge.data.parallel import read_parallel
from dlforge.metrics.generation import bleu_chrf
from dlforge.models import load_pretrained
from dlforge.text.attention_map import cross_attention, plot_cross_attention
from dlforge.training.seq2seq import train_seq2seq


def find_data() -> Path:
    env = os.environ.get("DLFORGE_DATA")
    for path in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1].parent / "shared" / "data"]:
        if (path / "multi30k" / "train.de.gz").is_file():
            return path / "multi30k"
    sys.exit("Multi30k not found: set DLFORGE_DATA to the folder holding multi30k/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget")
    parser.add_argument("--steps", type=int, help="train this many steps instead of --minutes")
    parser.add_argument("--out", default="runs/example-translate")
    args = parser.parse_args()
    data, out = find_data(), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    # 1. train: joint BPE on both sides, evaluation with BLEU/chrF on 300 validation sentences
    limits = {"max_steps": args.steps, "eval_interval": args.steps} if args.steps else {"max_minutes": args.minutes}
    result = train_seq2seq(data / "train.de.gz", data / "train.en.gz", out / "run", valid_source=data / "val.de.gz",
                           valid_target=data / "val.en.gz", preset="multi30k", overrides=limits, seed=0)
    print(f"trained {result['step']} steps in {result['elapsed_s'] / 60:.1f} min; last evaluation: {result['scores']}")
    # 2. translate the first 100 test sentences with beam search, through the pipeline
    translate = dlforge.pipeline("translation", model=out / "run")
    sources, references = read_parallel(data / "test_2016_flickr.de.gz", data / "test_2016_flickr.en.gz")
    outputs = [o["translation_text"] for o in translate(sources[:100], num_beams=4, max_new_tokens=60)]
    for source, output in list(zip(sources, outputs))[:3]:
        print(f"{source}\n  -> {output}")
    print(f"test BLEU on 100 sentences (beam 4): {bleu_chrf(outputs, references[:100])['bleu']:.1f}")
    # 3. where did it look? cross-attention of one translation, averaged over layers and heads
    model, tokenizer = load_pretrained(out / "run")
    attention = cross_attention(model, tokenizer, sources[0], num_beams=4)
    print(f"attention map: {plot_cross_attention(attention, out / 'attention.png')}")


if __name__ == "__main__":
    main()
