"""Distil the SST-2 fine-tuned all-MiniLM-L6-v2 (6 blocks) into a 2-block student: accuracy and speed.

The teacher is OUT/model of `bench_sst2_finetune.py --method full`. The student starts from the
teacher's blocks 0 and 3 (spread over its depth) and its head, and learns with
`dlforge finetune --method distill` (soft teacher logits at T = 2 and the labels, alpha 0.5) on all of
SST-2 train within a wall-clock budget. Reported: SST-2 dev accuracy (872) of teacher and student, and the
forward time over the whole dev set in batches of 32 (max_length 64, fp32, this machine's CPU threads)
with the speed-up.

    python benchmarks/bench_sst2_finetune.py --method full          # makes the teacher (30 min)
    python benchmarks/bench_distill.py [--teacher runs/bench-sst2-full/model] [--minutes 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import best_time, emit_json, first_rows, print_table, shared_data_dir  # noqa: E402

from dlforge.models import load_pretrained  # noqa: E402
from dlforge.transfer import finetune  # noqa: E402
from dlforge.transfer.tasks import FINETUNE_TASKS, collate  # noqa: E402


def forward_seconds(model, features: list[dict], batch_size: int, pad_id: int) -> float:
    """Best-of-3 seconds for one forward pass over all `features` in batches (on CPU, fp32)."""
    model = model.cpu().eval()
    batches = [collate(features[i:i + batch_size], pad_id) for i in range(0, len(features), batch_size)]

    @torch.inference_mode()
    def run():
        for batch in batches:
            model(**batch)

    return best_time(run, repeats=3, warmup=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/bench-sst2-full/model", help="the SST-2 fine-tuned model folder")
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget (default 20)")
    parser.add_argument("--epochs", type=float, default=3.0, help="upper bound if the budget allows more")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train", type=int, help="use only the first N training sentences (smoke tests)")
    parser.add_argument("--out", default="runs/bench-distill", help="run folder (replaced if it exists)")
    parser.add_argument("--device", default="auto", help="training device: auto | cpu | cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None or not (data / "sst2" / "train.tsv").is_file():
        print("skipped: SST-2 not found (set DLFORGE_DATA or put shared/data beside the repo)")
        sys.exit(0)
    teacher_dir = Path(args.teacher)
    if not (teacher_dir / "config.json").is_file():
        print(f"skipped: no teacher at {teacher_dir}: run benchmarks/bench_sst2_finetune.py --method full first "
              "(or pass --teacher DIR)")
        sys.exit(0)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    train = data / "sst2" / "train.tsv"
    if args.train:
        train = first_rows(train, args.train, out / "train_subset.tsv")
    report = finetune(teacher_dir, "text-classification", train, data / "sst2" / "dev.tsv", out=out,
                      method="distill", teacher=teacher_dir, student_layers=args.student_layers, minutes=args.minutes,
                      epochs=args.epochs, max_length=64, batch_size=32, lr=args.lr, eval_interval=1000,
                      device=args.device, seed=0, progress=not args.quiet,
                      overwrite=True)  # `out` was emptied above and holds at most the --train subset

    task = FINETUNE_TASKS["text-classification"]()
    dev = task.read(data / "sst2" / "dev.tsv")
    teacher, tok = load_pretrained(teacher_dir)
    student, _ = load_pretrained(out / "model")
    teacher_scores = task.evaluate(teacher, tok, dev, out / "teacher", batch_size=32, max_length=64)
    features = task.encode(dev, tok, 64)
    t_teacher = forward_seconds(teacher, features, 32, tok.pad_token_id or 0)
    t_student = forward_seconds(student, features, 32, tok.pad_token_id or 0)
    params = lambda m: sum(p.numel() for p in m.parameters())
    rows = [{"model": f"teacher ({teacher.config.n_layer} blocks)", "parameters": params(teacher),
             "dev accuracy": teacher_scores["accuracy"], "dev forward s": t_teacher, "speed-up": 1.0},
            {"model": f"student ({student.config.n_layer} blocks)", "parameters": params(student),
             "dev accuracy": report["accuracy"], "dev forward s": t_student, "speed-up": t_teacher / t_student}]
    print_table(rows, list(rows[0].keys()))
    t = report["training"]
    print(f"student: {t['step']} steps in {t['elapsed_s'] / 60:.1f} min ({t['stop_reason']}); model: {out / 'model'}")
    emit_json("distill", {"teacher_accuracy": round(teacher_scores["accuracy"], 4),
                          "student_accuracy": round(report["accuracy"], 4), "student_layers": student.config.n_layer,
                          "teacher_forward_s": round(t_teacher, 3), "student_forward_s": round(t_student, 3),
                          "speed_up": round(t_teacher / t_student, 2), "batch_size": 32, "max_length": 64,
                          "train_steps": t["step"], "train_minutes": round(t["elapsed_s"] / 60, 2),
                          "teacher_parameters": params(teacher), "student_parameters": params(student)})


if __name__ == "__main__":
    main()
