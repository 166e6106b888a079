"""WNUT-17 named-entity recognition by fine-tuning all-MiniLM-L6-v2 with `dlforge.transfer.finetune`.

Trains on WNUT-17 train (3,394 tweets, 6 entity types) within a wall-clock budget, evaluating entity F1 on
the dev set (1,009) during training and exporting the best checkpoint, as `dlforge finetune --eval` does;
then scores the exported OUT/model on the test set (`emerging.test.annotated`, 1,287): entity-level
precision / recall / F1 (seqeval, conlleval-compatible, the first sub-token's label for each word).

    python benchmarks/bench_wnut17.py [--minutes 12] [--out runs/bench-wnut17]

Settings: bf16 autocast, batch 32, lr 1e-4 (a 6-layer, 384-wide model takes a larger step than BERT-base's
2e-5..5e-5), warmup 6 %, cosine decay, max_length 128 (every training tweet fits; 2 test tweets are cut).

Reference, printed beside the result: bert-base-cased fine-tuned on the same split with Hugging Face's
token-classification recipe (3 epochs, lr 2e-5, batch 8, seqeval on the test split): entity F1 0.447
(revision caa6e850) and 0.476 (revision d6da89e1) in two runs published on the Hugging Face Hub model card
of Norika/bert-finetuned-ner. We could not verify a BERT-base figure in a peer-reviewed paper; for scale, BERTweet
(BERT-base sized, pretrained on 850M tweets) reports 56.5 entity F1 on the WNUT-17 test set (Nguyen et al.,
EMNLP 2020 demos, "BERTweet: A pre-trained language model for English Tweets").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import emit_json, minilm_dir, print_table, shared_data_dir  # noqa: E402

from dlforge.models import load_pretrained  # noqa: E402
from dlforge.transfer import finetune  # noqa: E402
from dlforge.transfer.tasks import FINETUNE_TASKS  # noqa: E402

REFERENCES = [  # (model, test entity F1, source)
    ("bert-base-cased", "0.447 / 0.476", "HF Hub model card Norika/bert-finetuned-ner (2 runs)"),
    ("BERTweet (base size, tweet-pretrained)", "0.565", "Nguyen et al. 2020, BERTweet paper"),
]


def first_sentences(path: Path, n: int, out: Path) -> Path:
    """The first n sentences of a CoNLL file, for smoke tests."""
    blocks = [b for b in re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8")) if b.strip()]
    out.write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget (default 12)")
    parser.add_argument("--epochs", type=float, default=10.0, help="upper bound if the budget allows more")
    parser.add_argument("--train", type=int, help="use only the first N training sentences (smoke tests)")
    parser.add_argument("--test", type=int, help="score only the first N test sentences (smoke tests)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", default="bf16", help="bf16 (default) | fp32 | auto")
    parser.add_argument("--out", default="runs/bench-wnut17", help="run folder (replaced if it exists)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--model", help="encoder folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    data = shared_data_dir()
    wnut = data / "wnut17" if data else None
    if wnut is None or not (wnut / "wnut17train.conll").is_file():
        print("skipped: WNUT-17 not found (set DLFORGE_DATA or put shared/data beside the repo)")
        sys.exit(0)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    train, dev, test = wnut / "wnut17train.conll", wnut / "emerging.dev.conll", wnut / "emerging.test.annotated"
    if args.train:
        train = first_sentences(train, args.train, out / "train_subset.conll")
    if args.test:
        test = first_sentences(test, args.test, out / "test_subset.conll")

    start = time.perf_counter()
    report = finetune(args.model or minilm_dir(), "token-classification", train, dev, out=out / "run",
                      minutes=args.minutes, epochs=args.epochs, max_length=args.max_length,
                      batch_size=args.batch_size, lr=args.lr, precision=args.precision, device=args.device, seed=0,
                      progress=not args.quiet)
    task = FINETUNE_TASKS["token-classification"]()
    model, tokenizer = load_pretrained(out / "run" / "model")
    test_scores = task.evaluate(model, tokenizer, task.read(test), out / "test", max_length=args.max_length)
    wall = time.perf_counter() - start

    t = report["training"]
    epochs_done = t["step"] * args.batch_size / t["train_examples"]
    rows = [{"model": "all-MiniLM-L6-v2 (dlforge)", "split": split, "P": s["precision"], "R": s["recall"],
             "entity F1": s["f1"], "source": f"this run: {t['step']} steps, {epochs_done:.1f} epochs, "
                                             f"{t['elapsed_s'] / 60:.1f} min"}
            for split, s in (("dev", report), ("test", test_scores))]
    rows += [{"model": name, "split": "test", "entity F1": f1, "source": source} for name, f1, source in REFERENCES]
    print_table(rows, ["model", "split", "P", "R", "entity F1", "source"])
    print("per type (test): " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in test_scores["per_type"].items()))
    print(f"exported: the {t['exported']} checkpoint ({t['stop_reason']}); model: {out / 'run' / 'model'}; "
          f"test report: {test_scores['ner_report_txt']}")
    emit_json("wnut17", {"train_sentences": t["train_examples"], "steps": t["step"], "epochs": round(epochs_done, 3),
                         "train_minutes": round(t["elapsed_s"] / 60, 2), "wall_minutes": round(wall / 60, 2),
                         "dev_f1": round(report["f1"], 4), "test_precision": round(test_scores["precision"], 4),
                         "test_recall": round(test_scores["recall"], 4), "test_f1": round(test_scores["f1"], 4),
                         "test_per_type_f1": {k: round(v["f1"], 4) for k, v in test_scores["per_type"].items()},
                         "test_sentences": test_scores["eval_examples"],
                         "reference_bert_base_cased_test_f1": [0.447, 0.476], "lr": args.lr,
                         "batch_size": args.batch_size, "max_length": args.max_length, "precision": args.precision,
                         "budget_minutes": args.minutes})


if __name__ == "__main__":
    main()
