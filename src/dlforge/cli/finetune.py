"""`dlforge finetune`: fine-tune an encoder on a labelled file (text classification, NER, QA, ...) into a model
folder the pipelines load. A thin layer over `dlforge.transfer.finetune` (transfer/recipe.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DlforgeError
from .common import (
    add_budget_flags,
    add_deprecated_alias,
    add_output_flags,
    add_tensorboard_flag,
    number,
    positive_float,
    positive_int,
    seed,
)
from .names import FINETUNE_METHODS, FINETUNE_TASKS

# CLI flag (argparse dest) -> finetune setting of the same name; unset flags keep the method's defaults
SETUP_SETTINGS = ("batch_size", "max_length", "top_k_layers", "lora_r", "lora_alpha", "lora_dropout", "precision",
                  "device", "seed")  # what both finetune and lr-find take
SETTINGS = SETUP_SETTINGS + ("epochs", "max_steps", "minutes", "lr", "layer_lr_decay", "teacher", "student_layers",
                             "select_by", "decay", "warmup_ratio", "tensorboard")


def cmd_lr_find(args) -> int:
    from ..transfer.recipe import find_learning_rate, parse_task_options

    missing = [flag for flag, value in (("--model", args.model), ("--task", args.task), ("--train", args.train))
               if value is None]
    if missing:
        raise DlforgeError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    settings = {k: getattr(args, k) for k in SETUP_SETTINGS if getattr(args, k, None) is not None}
    if args.option:
        settings["options"] = parse_task_options(args.task, args.option)
    result = find_learning_rate(args.model, args.task, args.train, args.out, method=args.method or "full",
                                min_lr=args.min_lr, max_lr=args.max_lr, steps=args.max_steps,
                                progress=not args.quiet, **settings)
    steepest, lowest = result["suggestion"], result["min_loss_lr"]
    print(f"suggested learning rate: {steepest:.2e} (steepest fall of the loss)" if steepest is not None
          else "the loss never fell: try a larger --max-lr or more --max-steps")
    if lowest is not None:
        print(f"lowest loss at {10 * lowest:.2e} (one tenth of it: {lowest:.2e})")
    end = "diverged" if result["stopped_early"] else "ran"
    print(f"{end} after {result['steps_run']} steps; plot: {result['plot']}  "
          f"(e.g. dlforge finetune ... --lr {steepest or lowest or 1e-4:.1e})")
    return 0


def cmd_finetune(args) -> int:
    from ..transfer.recipe import finetune, parse_task_options

    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    if args.resume:
        length = {k: settings.pop(k) for k in ("max_steps", "minutes") if k in settings}  # a resume may change it
        given = sorted(settings) + [k for k in ("model", "task", "train", "eval", "method", "option")
                                    if getattr(args, k)]
        if given:
            print(f"note: --resume continues with the settings {args.out}/run.json was started with; ignoring "
                  f"{', '.join('--' + k.replace('_', '-') for k in given)}")
        report = finetune(out=args.out, resume=True, progress=not args.quiet, **length)
    else:
        model = args.model or (args.teacher if args.method == "distill" else None)
        missing = [flag for flag, value in (("--model", model), ("--task", args.task), ("--train", args.train))
                   if value is None]
        if missing:
            raise DlforgeError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (or "
                               "--resume to continue the run in --out)")
        if args.option:
            settings["options"] = parse_task_options(args.task, args.option)
        report = finetune(model, args.task, args.train, args.eval, out=args.out, method=args.method or "full",
                          progress=not args.quiet, overwrite=args.overwrite, **settings)
    training = report["training"]
    best = training.get("best_val_loss")
    best = f", best eval loss {best:.4f}" if best is not None else ""
    print(f"done: {training['stop_reason']}; step {training['step']}{best}, {report['timing']['total_s']:.0f} s")
    scores = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scores:
        print("eval: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))
    out = Path(args.out)
    print(f"model: {out / 'model'}  (e.g. dlforge pipeline {report['task']} --model {out / 'model'} ...)")
    print(f"report: {out / 'report.json'}")
    return 0


def _add_run_setup(p: argparse.ArgumentParser) -> None:
    """The flags that say what trains on what: shared by finetune and lr-find."""
    p.add_argument("--model", help="model to start from: a dlforge run or model folder, a Hugging Face folder or a "
                                   "hub id (image-classification: also a torchvision/timm ResNet .pth/.safetensors "
                                   "file; distill: defaults to --teacher)")
    p.add_argument("--task", help=f"the task: {', '.join(FINETUNE_TASKS)}")
    p.add_argument("--train", help="training data: text-classification .csv/.tsv with a header row or .jsonl; "
                                   "token-classification a CoNLL file (token<TAB>tag per line, blank line between "
                                   "sentences); question-answering a SQuAD .json; image-classification an MNIST IDX "
                                   "folder, a folder of images (one sub-folder per class) or sklearn-digits")
    p.add_argument("--out", required=True, help="run folder (OUT/model, OUT/report.json, checkpoints, metrics)")
    p.add_argument("--method", help=f"what trains: {' | '.join(FINETUNE_METHODS)} (default full)")
    p.add_argument("--batch-size", type=positive_int, help="examples per step (default 32)")
    p.add_argument("--max-length", type=positive_int, help="tokens per input (default: the task's, e.g. 128)")
    p.add_argument("--top-k-layers", type=int, help="top-k: how many of the top blocks train (default 2)")
    p.add_argument("--lora-r", type=positive_int, help="lora: adapter rank (default 8)")
    p.add_argument("--lora-alpha", type=positive_float, help="lora: adapter scale alpha (default 16)")
    p.add_argument("--lora-dropout", type=number,
                   help="lora: dropout on the adapters' inputs (default 0.1; 0 trains faster on CPU)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="task option, e.g. --option text_column=review --option text_pair_column=hypothesis; images: "
                        "--option classes=5,6,7,8,9 --option per_class=10 (repeatable)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="auto (default): bf16 autocast on CPU and supporting GPUs")
    p.add_argument("--device", help="auto (default: a CUDA GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed, help="random seed (default 42): the same seed gives the same model")


def add_parser(sub) -> None:
    """Add `finetune` and `lr-find` to the top-level sub-commands."""
    p = sub.add_parser(
        "finetune", help="fine-tune a pretrained model on labelled data (text classification, NER, QA, images)",
        description="Fine-tune a BERT-family encoder, or a ViT / ResNet for image-classification (dlforge or Hugging "
                    "Face folder, or hub id) on labelled data. Writes OUT/model (loads in `dlforge pipeline`), "
                    "OUT/report.json (metrics on --eval), the task's report files, metrics.csv, loss.png and "
                    "checkpoints.")
    _add_run_setup(p)
    p.add_argument("--eval", help="evaluation data: eval loss during training (the best checkpoint is exported) and "
                                  "the final report; for an MNIST folder or a train/+test/ image folder given as "
                                  "both --train and --eval, its test split")
    p.add_argument("--epochs", type=positive_float, help="passes over the training set (default 3; features 10)")
    add_budget_flags(p, steps_help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=positive_float,
                   help="peak learning rate (default: full 5e-5, top-k 1e-4, lora 2e-4 with the head at 1e-3, "
                        "features 1e-3, distill 1e-4; `dlforge lr-find` suggests one); warmup 6 %%, then cosine "
                        "decay to 0")
    p.add_argument("--decay", choices=("cosine", "constant", "one-cycle"),
                   help="learning-rate schedule after warmup (default cosine to 0); one-cycle: up from lr/25 over "
                        "the warmup, then down, with Adam's beta1 mirroring it (fastai's fit_one_cycle; use "
                        "--warmup-ratio 0.25)")
    p.add_argument("--warmup-ratio", type=number, help="share of the steps spent warming up (default 0.06)")
    p.add_argument("--layer-lr-decay", type=positive_float,
                   help="full/top-k: each block below the head learns this factor slower (e.g. 0.8)")
    p.add_argument("--teacher", help="distill: the fine-tuned model folder to learn from")
    p.add_argument("--student-layers", type=positive_int,
                   help="distill: encoder blocks of the student, copied from --model's blocks spread over its depth")
    p.add_argument("--select-by", choices=("metric", "loss"),
                   help="which checkpoint OUT/model is: metric (default; the best eval accuracy for "
                        "text- and image-classification, entity F1 for token-classification, the lowest eval loss "
                        "for question-answering) or loss")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint (a new "
                   "--max-steps/--minutes stretches the rest of the learning-rate schedule over it)")
    p.add_argument("--overwrite", action="store_true",
                   help="write the run into a non-empty --out that holds no dlforge run (same-named files replaced)")
    add_tensorboard_flag(p)
    add_output_flags(p)
    p.set_defaults(func=cmd_finetune)

    find = sub.add_parser(
        "lr-find", help="learning-rate range test for a fine-tuning run: plot loss against LR, suggest one",
        description="Train the run `dlforge finetune` would train with the same flags for --max-steps steps while the "
                    "learning rate grows exponentially from --min-lr to --max-lr (Smith, 2017), then put the model "
                    "back. Writes OUT/lr_find.png (smoothed loss against LR, suggestions marked) and "
                    "OUT/lr_find.json, and prints the suggestion: the steepest fall of the loss.")
    _add_run_setup(find)
    find.add_argument("--min-lr", type=positive_float, default=1e-7, help="first learning rate (default 1e-7)")
    find.add_argument("--max-lr", type=positive_float, default=10.0, help="last learning rate (default 10)")
    find.add_argument("--max-steps", type=positive_int, default=100,
                      help="optimizer steps of the test at most (default 100; it stops early when the loss diverges)")
    add_deprecated_alias(find, "--steps", "--max-steps", "max_steps", positive_int)
    add_output_flags(find)
    find.set_defaults(func=cmd_lr_find)
