"""SQuAD v1.1: fine-tune all-MiniLM-L6-v2 for extractive QA on a CPU time budget, score EM/F1 (official rules).

Data: the reconstructed SQuAD v1.1 dev set in shared/data/squad (48 articles, 10,570 questions; its answer
texts are the official ones, so EM/F1 are computed as on the official file; see shared/data/MANIFEST.md
note B). The questions of the first 24 articles train, those of the other 24 are held out, so no
paragraph is seen in both. `dlforge.transfer.finetune` trains (method full, bf16 autocast, about --minutes
of training; no eval file, so the time goes to training and the last weights are exported); the held-out
questions are then answered by the same span decoding as `dlforge.pipeline("question-answering")` and
scored with `dlforge.metrics.squad` (exact match and token F1, x100).

    python benchmarks/bench_squad.py [--minutes 15] [--baseline]
    python benchmarks/bench_squad.py --minutes 0.3 --eval-questions 50 --max-length 128   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import emit_json, minilm_dir, print_table, shared_data_dir  # noqa: E402

from dlforge.io import atomic_write_json  # noqa: E402
from dlforge.models import load_pretrained  # noqa: E402
from dlforge.transfer import finetune  # noqa: E402
from dlforge.transfer.tasks.question_answering import QuestionAnsweringTask  # noqa: E402


def evaluate(model_dir, task, examples, out_dir, max_length):
    """EM/F1 on `examples` of the model in `model_dir` (bf16 autocast, as it trained) and the seconds taken."""
    model, tokenizer = load_pretrained(model_dir, task="question-answering")
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = task.evaluate(model, tokenizer, examples, out_dir, batch_size=64, max_length=max_length)
    return scores, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget (wall clock)")
    parser.add_argument("--train-articles", type=int, default=24, help="articles that train; the rest evaluate")
    parser.add_argument("--eval-questions", type=int, default=0, help="held-out questions scored (0: all)")
    parser.add_argument("--max-length", type=int, default=384, help="tokens per window")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=3.0, help="upper bound; the time budget usually ends first")
    parser.add_argument("--baseline", action="store_true", help="also score the untrained QA head")
    parser.add_argument("--out", help="run folder (default: a temporary one)")
    args = parser.parse_args()
    data = shared_data_dir()
    path = data / "squad" / "dev-v1.1.reconstructed.json" if data else None
    if path is None or not path.is_file():
        print("skipped: SQuAD not found (set DLFORGE_DATA or put shared/data beside the repo)")
        sys.exit(0)
    model_dir = minilm_dir()
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_squad-"))
    train_file, eval_file = out / "train.json", out / "heldout.json"
    atomic_write_json(train_file, {"version": "1.1", "data": articles[:args.train_articles]})
    atomic_write_json(eval_file, {"version": "1.1", "data": articles[args.train_articles:]})
    task = QuestionAnsweringTask()
    train_examples, eval_examples = task.read(train_file), task.read(eval_file)
    if args.eval_questions:
        eval_examples = eval_examples[:args.eval_questions]

    rows = []
    if args.baseline:
        scores, seconds = evaluate(model_dir, task, eval_examples, out / "baseline", args.max_length)
        rows.append({"model": "untrained QA head", "steps": 0, "train min": 0.0, "EM": scores["exact_match"],
                     "F1": scores["f1"], "eval s": seconds})
    report = finetune(model_dir, "question-answering", train_file, out=out / "run", method="full",
                      minutes=args.minutes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      max_length=args.max_length, precision="bf16", progress=False)
    training = report["training"]
    scores, seconds = evaluate(out / "run" / "model", task, eval_examples, out / "run", args.max_length)
    rows.append({"model": "fine-tuned", "steps": training["step"], "train min": report["timing"]["train_s"] / 60,
                 "EM": scores["exact_match"], "F1": scores["f1"], "eval s": seconds})
    print(f"all-MiniLM-L6-v2 on SQuAD v1.1 (reconstructed dev): {len(train_examples)} training questions "
          f"({training['train_features']} windows of {args.max_length} tokens), {len(eval_examples)} held-out")
    print_table(rows, list(rows[0].keys()))
    figures = {"train_questions": len(train_examples), "train_windows": training["train_features"],
               "eval_questions": len(eval_examples), "max_length": args.max_length, "steps": training["step"],
               "batch_size": args.batch_size, "lr": args.lr,
               "train_minutes": round(report["timing"]["train_s"] / 60, 2),
               "exact_match": round(scores["exact_match"], 2), "f1": round(scores["f1"], 2),
               "eval_s": round(seconds, 1), "predictions": scores["predictions_json"]}
    if args.baseline:
        figures.update(baseline_exact_match=round(rows[0]["EM"], 2), baseline_f1=round(rows[0]["F1"], 2))
    emit_json("squad", figures)


if __name__ == "__main__":
    main()
