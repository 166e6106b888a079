"""SciTLDR-A: one-sentence summaries (TL;DRs) of paper abstracts by a Transformer trained from scratch here,
scored with ROUGE-1/2/L beside a lead-sentence baseline computed the same way.

Trains `dlforge train seq2seq` (task=summarization) on the 1,992 training abstracts (every (abstract, TL;DR) pair),
validating on dev; then summarizes the 618 test abstracts with beam search (4 beams, no repeated trigram) and
scores them against all of each paper's reference TL;DRs (the best-matching one per paper, the SciTLDR rule;
Google's rouge-score with stemming). Baseline: the abstract's first sentence, scored the same way.

    python benchmarks/bench_scitldr.py [--minutes 20] [--out runs/bench-scitldr]

Model: 3+3 pre-LN blocks, d=256, 4 heads, FFN 1024, joint BPE 8,000, sources cut to 320 tokens, targets to 64.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import emit_json, print_table, shared_data_dir

from dlforge.metrics.generation import rouge
from dlforge.models import load_pretrained
from dlforge.settings import parse_overrides
from dlforge.text.seq2seq_generation import generate_text2text
from dlforge.training.seq2seq import field_types, train_seq2seq

SETTINGS = ["task=summarization", "max_source_length=320", "max_target_length=64", "max_position=320",
            "max_tokens=8000", "eval_samples=100", "eval_max_new_tokens=48", "eval_interval=200", "warmup_steps=200",
            "dropout=0.2"]


def read_split(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def abstract(paper: dict) -> str:
    return " ".join(" ".join(paper["source"]).split())  # one line: sentences may hold newlines


def write_pairs(papers: list[dict], folder: Path, name: str) -> tuple[Path, Path]:
    sources, targets = [], []
    for paper in papers:
        for tldr in paper["target"]:
            sources.append(abstract(paper))
            targets.append(" ".join(tldr.split()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.src").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (folder / f"{name}.tgt").write_text("\n".join(targets) + "\n", encoding="utf-8")
    return folder / f"{name}.src", folder / f"{name}.tgt"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--out", default="runs/bench-scitldr")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE overrides")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None or not (data / "scitldr" / "train.jsonl").is_file():
        print("skipped: SciTLDR not found (set DLFORGE_DATA to the folder holding scitldr/)")
        sys.exit(0)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    splits = {name: read_split(data / "scitldr" / f"{name}.jsonl") for name in ("train", "dev", "test")}
    train_files = write_pairs(splits["train"], out / "data", "train")
    dev_files = write_pairs(splits["dev"], out / "data", "dev")
    overrides = {"max_minutes": args.minutes, **parse_overrides(SETTINGS + args.set, field_types())}
    result = train_seq2seq(*train_files, out / "run", valid_source=dev_files[0], valid_target=dev_files[1],
                           preset="multi30k", overrides=overrides, seed=1337, progress=not args.quiet)
    model, tokenizer = load_pretrained(out / "run")
    test = splits["test"]
    references = [[" ".join(t.split()) for t in paper["target"]] for paper in test]
    outputs = generate_text2text(model, tokenizer, [abstract(p) for p in test], num_beams=4, max_new_tokens=60,
                                 no_repeat_ngram_size=3, max_source_length=320, batch_size=32)
    (out / "test_summaries.txt").write_text("\n".join(outputs) + "\n", encoding="utf-8")
    lead = [" ".join(p["source"][0].split()) for p in test]
    rows, figures = [], {"train_minutes": round(result["elapsed_s"] / 60, 1), "steps": result["step"]}
    for name, predictions in (("dlforge Transformer (beam 4)", outputs), ("lead sentence", lead)):
        scores = rouge(predictions, references)
        rows.append({"system": name, **{k: round(v, 2) for k, v in scores.items()}})
        figures["model" if name.startswith("dlforge") else "lead"] = {k: round(v, 2) for k, v in scores.items()}
    print(f"\ntrained {figures['train_minutes']} min, {result['step']} steps; 618 test papers, "
          f"{sum(len(r) for r in references)} reference TL;DRs")
    for paper, summary in list(zip(test, outputs))[:3]:
        print(f"  {paper['paper_id']}: {summary}\n    reference: {paper['target'][0]}")
    print_table(rows, ["system", "rouge1", "rouge2", "rougeL"])
    emit_json("scitldr", figures)


if __name__ == "__main__":
    main()
