"""The `dlforge` command line.

Every command is a thin layer over a library function (the same code Python users call):
  train gpt  -> dlforge.training.lm.train_language_model
  train bert -> dlforge.training.mlm.train_masked_lm (cli/train_bert.py)
  train seq2seq -> dlforge.training.seq2seq.train_seq2seq (cli/train_seq2seq.py)
  train ae|vae|gan|diffusion|classifier, sample, img2img, inpaint, outpaint, noise-strip, anomaly
             -> dlforge.training.images, dlforge.diffusion.sampling, ... (cli/images.py)
  finetune   -> dlforge.transfer.finetune (cli/finetune.py)
  generate   -> dlforge.text.generation.generate_text
  attention  -> dlforge.text.attention_map (cross-attention heatmap of a translation)
  info       -> dlforge.models.load_pretrained + the run's metrics
  demo       -> train_language_model on the bundled tiny Shakespeare, with samples as it goes

Errors the user can fix print one line and exit with status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import re
import sys
import time
from importlib import resources
from pathlib import Path

from .. import __version__
from ..errors import DlforgeError


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {value}")
    return value


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _text(text: str) -> str:
    """A text flag with the shell-friendly escapes \\n, \\t, \\r and \\\\ decoded (`--stop "\\n\\n"`), the same
    way for every text flag that takes them; other backslashes stay as written."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training command shares: the budget (--max-steps, --minutes), --resume, --seed, --quiet
    and the hidden --debug. `run_budget(args)` turns the budget into Trainer overrides."""
    parser.add_argument("--max-steps", type=_positive_int, help="optimizer steps (the LR schedule ends here)")
    parser.add_argument("--minutes", type=_positive_float, help="wall-clock budget; the schedule is fitted to it")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                        "(a new --max-steps/--minutes stretches the rest of the learning-rate schedule over it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the run into a non-empty --out that holds no dlforge run "
                             "(same-named files replaced)")
    parser.add_argument("--on-nan", choices=("stop", "skip"),
                        help="a NaN/inf loss or gradient: stop, keeping the last good checkpoint (default), or skip "
                             "that batch")
    parser.add_argument("--seed", type=_seed, help="random seed (default 1337)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_budget(args) -> dict:
    """--max-steps / --minutes as Trainer overrides (only those given)."""
    budget = {"max_steps": args.max_steps, "max_minutes": args.minutes, "on_nan": args.on_nan}
    return {key: value for key, value in budget.items() if value is not None}


# ------------------------------------------------------------------------------------------ train
def cmd_train(args) -> int:
    from ..training.lm import parse_overrides, train_language_model

    overrides = parse_overrides(args.set or [])
    overrides.update(run_budget(args))
    if args.data is None and not args.resume:
        raise DlforgeError("--data is required: give a UTF-8 text file or a folder of text files")
    result = train_language_model(args.data, args.out, preset=args.preset, overrides=overrides,
                                  tokenizer=args.tokenizer, vocab_size=args.vocab_size, resume=args.resume,
                                  seed=args.seed, progress=not args.quiet, overwrite=args.overwrite)
    _print_result(result, args.out)
    return 0


def _print_result(result: dict, out) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    best = result["best_val_loss"]
    print(f"done: {result['stop_reason']}; step {result['step']}, best val loss {best:.4f}, "
          f"{result['elapsed_s']:.0f} s. Model: {Path(out) / 'checkpoints' / 'best'}")


# --------------------------------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    import torch

    from ..models import load_pretrained
    from ..text.generation import generate_text

    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer = load_pretrained(args.model, expected_kind="gpt")
    if tokenizer is None:
        raise DlforgeError(f"{args.model} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, use_cache=not args.no_cache)
    prompt = args.prompt
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        if args.num_samples > 1:
            print(f"--- sample {i + 1}", flush=True)
        if args.stream:  # each sample as it is generated, one after the other
            sys.stdout.write(prompt)
            for piece in generate_text(model, tokenizer, prompt, stream=True, stop=args.stop, seed=seed, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print(prompt + generate_text(model, tokenizer, prompt, stop=args.stop, seed=seed, **options))
    return 0


# ------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from ..models import load_pretrained, resolve_model_dir

    directory = resolve_model_dir(args.model)
    model, tokenizer = load_pretrained(args.model)
    info = {"path": str(directory), "kind": model.kind, "parameters": sum(p.numel() for p in model.parameters()),
            "config": vars(model.config),
            "tokenizer": None if tokenizer is None else {"type": type(tokenizer).__name__,
                                                         "vocab_size": tokenizer.vocab_size}}
    run_dir = Path(args.model)
    run_file = run_dir / "run.json"
    if run_file.is_file():
        import csv

        run = json.loads(run_file.read_text())
        rows = []
        if (run_dir / "metrics.csv").is_file():
            with open(run_dir / "metrics.csv", newline="") as f:
                rows = list(csv.DictReader(f))
        vals = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
        data = run.get("data") or " + ".join(run.get("files", [])[:2]) or None  # seq2seq: source + target files
        info["run"] = {"data": data, "preset": run.get("preset"),
                       "steps": int(rows[-1]["step"]) if rows else 0,
                       "best_val_loss": min(vals) if vals else None, "train": run.get("train")}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['kind']} model at {info['path']}")
    print(f"  parameters: {info['parameters']:,}")
    print("  config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
    if info["tokenizer"]:
        print(f"  tokenizer: {info['tokenizer']['type']}, vocab {info['tokenizer']['vocab_size']}")
    if "run" in info:
        r = info["run"]
        best = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "n/a"
        print(f"  run: {r['steps']} steps on {r['data']} (preset {r['preset']}), best val loss {best}")
    return 0


# --------------------------------------------------------------------------------------- pipeline
# Task-specific pipeline flags: argparse dest -> (flag, the tasks that take it, the pipeline keyword).
# The keywords are the Hugging Face pipelines' call arguments, so the CLI and Python read the same.
TASK_FLAGS = {
    "top_k": ("--top-k", ("text-classification", "fill-mask", "question-answering", "image-classification"),
              "top_k"),
    "function_to_apply": ("--function-to-apply", ("text-classification",), "function_to_apply"),
    "targets": ("--targets", ("fill-mask",), "targets"),
    "aggregation_strategy": ("--aggregation-strategy", ("token-classification",), "aggregation_strategy"),
    "stride": ("--stride", ("token-classification",), "stride"),
    "doc_stride": ("--doc-stride", ("question-answering",), "doc_stride"),
    "max_answer_len": ("--max-answer-len", ("question-answering",), "max_answer_len"),
    "handle_impossible_answer": ("--handle-impossible-answer", ("question-answering",), "handle_impossible_answer"),
    "others": ("--others", ("sentence-similarity",), "others"),
    "candidate_labels": ("--candidate-labels", ("zero-shot-classification",), "candidate_labels"),
    "hypothesis_template": ("--hypothesis-template", ("zero-shot-classification",), "hypothesis_template"),
    "multi_label": ("--multi-label", ("zero-shot-classification",), "multi_label"),
}
SEQ2SEQ_TASKS = ("translation", "summarization", "text2text-generation")
IMAGE_TASKS = ("image-classification", "image-feature-extraction")
# generation flags of the encoder-decoder pipelines, under Hugging Face's keyword names
for _name in ("min_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "length_penalty",
              "no_repeat_ngram_size", "early_stopping", "num_return_sequences", "repetition_penalty", "prefix"):
    TASK_FLAGS[_name] = ("--" + _name.replace("_", "-"), SEQ2SEQ_TASKS, _name)
TASK_FLAGS["top_k"] = ("--top-k", TASK_FLAGS["top_k"][1] + SEQ2SEQ_TASKS, "top_k")


def cmd_pipeline(args) -> int:
    from ..pipelines import pipeline, read_inputs
    from ..pipelines.tasks import ALIASES

    texts = list(args.texts or [])
    if args.file:
        texts += read_inputs(args.file, args.column)
    elif args.column:
        raise DlforgeError("--column needs --file: it picks the column (or JSON field) of a .csv/.tsv/.jsonl file")
    if (args.question or args.context is not None) and args.task != "question-answering":
        raise DlforgeError("--question and --context are options of question-answering only")
    if args.task == "question-answering":  # inputs become {"question", "context"} records
        texts += args.question or []
        if any(isinstance(t, str) for t in texts) and args.context is None:
            raise DlforgeError("question-answering needs --context TEXT for its questions (or --file FILE.jsonl "
                               'of {"question": ..., "context": ...} records)')
        texts = [t if isinstance(t, dict) else {"question": t, "context": args.context} for t in texts]
        if not texts:
            raise DlforgeError("no question: give --question TEXT --context TEXT, or --file FILE.jsonl of "
                               '{"question": ..., "context": ...} records')
    if not texts:
        raise DlforgeError("no input: give texts as arguments or --file FILE (.txt, .csv, .tsv or .jsonl)")
    task = ALIASES.get(args.task, args.task)
    if task in IMAGE_TASKS:  # the inputs are image files or folders of them
        from ..data.processor import expand_image_paths

        texts = expand_image_paths(texts)
    zero_shot = task == "zero-shot-classification"
    options = {}
    for dest, (flag, tasks, keyword) in TASK_FLAGS.items():
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        if task not in tasks:
            raise DlforgeError(f"{flag} is an option of {', '.join(tasks)} only, not of {args.task}")
        options[keyword] = value
    if "targets" in options:
        options["targets"] = [t for group in options["targets"] for t in group.split(",") if t]
    if args.task != "question-answering" and any(isinstance(t, dict) for t in texts):
        raise DlforgeError(f"the records of {args.file} have no 'text' field: choose the field to use with --column")
    seq2seq = task in SEQ2SEQ_TASKS or task.startswith("translation_")
    prefix = options.pop("prefix", None)
    runner = pipeline(args.task, args.model, batch_size=args.batch_size, device=args.device,
                      **({"max_length": args.max_length} if args.max_length else {}),
                      **({"prefix": prefix} if prefix is not None else {}))
    if zero_shot:
        options["candidate_labels"] = [label for group in args.candidate_labels or [] for label in group.split(",")]
    if task == "text-generation":
        options.update(max_new_tokens=args.max_new_tokens or 50, seed=args.seed)
    if seq2seq:
        options.update(seed=args.seed, **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
        if options.get("early_stopping") in ("true", "false"):
            options["early_stopping"] = options["early_stopping"] == "true"
    for text, result in zip(texts, runner(texts, **options)):
        print(json.dumps({"input": text, "output": result}, ensure_ascii=False))
    return 0


# -------------------------------------------------------------------------------------- attention
def cmd_attention(args) -> int:
    from ..models import load_pretrained
    from ..text.attention_map import cross_attention, plot_cross_attention

    model, tokenizer = load_pretrained(args.model, expected_kind="seq2seq")
    if tokenizer is None:
        raise DlforgeError(f"{args.model} has no tokenizer files (tokenizer.json)")
    result = cross_attention(model, tokenizer, args.source, num_beams=args.num_beams,
                             max_new_tokens=args.max_new_tokens)
    path = plot_cross_attention(result, args.out, layer=args.layer, head=args.head)
    print(f"output: {result.translation}")
    print(f"heatmap: {path}")
    return 0


# ------------------------------------------------------------------------------------------- demo
def bundled_shakespeare(target: Path) -> Path:
    """Unpack the bundled (public-domain) tiny Shakespeare text to `target`."""
    data = resources.files("dlforge").joinpath("assets/tinyshakespeare.txt.gz").read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.decompress(data))
    return target


def cmd_demo(args) -> int:
    from ..text.generation import generate_text
    from ..training.lm import train_language_model

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "run.json").exists():
        raise DlforgeError(f"{out} already holds a run: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise DlforgeError(f"{out} is not empty: the demo writes a new run folder; choose another --out")
    text_file = bundled_shakespeare(out / "corpus" / "tinyshakespeare.txt")
    print(f"Training a character-level GPT on tiny Shakespeare for {args.minutes} min -> {out}")

    def show_sample(trainer, metrics):
        model = trainer.model
        sample = generate_text(model, trainer.tokenizer, "\n", max_new_tokens=200, temperature=0.8,
                               seed=args.seed)
        model.train()
        from tqdm.auto import tqdm

        tqdm.write(f"--- sample at step {metrics['step']} (val loss {metrics['val_loss']:.3f}):\n{sample}\n---")

    result = train_language_model(text_file, out, preset="shakespeare",
                                  overrides={"max_minutes": args.minutes, "eval_interval": args.eval_interval},
                                  seed=args.seed, on_eval=show_sample, progress=not args.quiet,
                                  overwrite=True)  # the folder holds just the corpus it unpacked
    _print_result(result, out)
    print(f"Metrics: {out / 'metrics.csv'}   loss curve: {out / 'loss.png'}")
    print(f"Sample more: dlforge generate {out} --prompt 'ROMEO:' --max-new-tokens 300")
    return 0


# ----------------------------------------------------------------------------------------- parser
class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line ("dlforge train gpt: error: ... (see --help)")."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ..training.lm import PRESETS, TOKENIZERS

    parser = OneLineParser(prog="dlforge", description="Readable, fast deep-learning reference models.")
    parser.add_argument("--version", action="version", version=f"dlforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model from scratch (or continue pretraining one)")
    families = train.add_subparsers(dest="family", metavar="FAMILY")
    gpt = families.add_parser("gpt", help="a GPT (decoder-only) language model on your text",
                              description="Train a GPT language model on a UTF-8 text file or folder.")
    gpt.add_argument("--data", help="UTF-8 text file, or a folder of text files")
    gpt.add_argument("--out", required=True, help="run folder for checkpoints, metrics.csv and loss.png")
    gpt.add_argument("--preset", default="shakespeare", choices=list(PRESETS),
                     help="model size + hyperparameters (default: shakespeare)")
    gpt.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a model or training field, e.g. --set n_layer=6 --set lr=3e-4 (repeatable)")
    gpt.add_argument("--tokenizer", default="char", choices=TOKENIZERS, help="char or byte-level bpe (default: char)")
    gpt.add_argument("--vocab-size", type=_positive_int, help="BPE vocabulary size (default 4096)")
    add_run_flags(gpt)
    gpt.set_defaults(func=cmd_train)
    from .images import add_parsers as add_image_commands
    from .images import add_train_parsers as add_train_images
    from .train_bert import add_parser as add_train_bert
    from .train_seq2seq import add_parser as add_train_seq2seq

    add_train_bert(families)
    add_train_seq2seq(families)
    add_train_images(families)

    gen = sub.add_parser("generate", help="continue a prompt with a trained GPT or a Hugging Face GPT-2",
                         description="Generate text from a dlforge run/model folder or a Hugging Face GPT-2 folder.")
    gen.add_argument("model", help="dlforge run folder, model folder, or Hugging Face GPT-2 folder")
    gen.add_argument("--prompt", type=_text, default="\n",
                     help="text to continue (default: a newline); \\n is a newline, \\t a tab")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    gen.add_argument("--temperature", type=_number, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    gen.add_argument("--top-k", type=_positive_int, help="sample only from the k most likely tokens")
    gen.add_argument("--top-p", type=_number, help="nucleus sampling: smallest set with probability >= p, in (0, 1]")
    gen.add_argument("--repetition-penalty", type=_number, default=1.0, help="> 1 discourages repeats (default 1)")
    gen.add_argument("--stop", type=_text, action="append",
                     help="stop when this text appears (repeatable; \\n is a newline: --stop '\\n\\n')")
    gen.add_argument("--num-samples", type=_positive_int, default=1, help="independent samples (default 1)")
    gen.add_argument("--seed", type=_seed, help="random seed for reproducible sampling")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")
    gen.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slower)")
    gen.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("info", help="describe a run or model folder")
    info.add_argument("model", help="dlforge run folder, model folder, or Hugging Face folder")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    info.set_defaults(func=cmd_info)

    from ..pipelines.tasks import ALIASES, PIPELINES

    pipe = sub.add_parser("pipeline", help="run a task pipeline on texts or images (JSON lines out)",
                          description="Run a task pipeline (text-classification, fill-mask, ...) on texts, or "
                                      "image-classification / image-feature-extraction on image files and folders.")
    text_tasks = sorted(t for t in [*PIPELINES, *ALIASES] if t != "image-generation")  # that one: `dlforge sample`
    pipe.add_argument("task", choices=text_tasks, help="the task")
    pipe.add_argument("texts", nargs="*", help="input texts (or --file); image tasks: image files or folders")
    pipe.add_argument("--model", required=True, help="dlforge or Hugging Face model folder, or a hub id (org/name)")
    pipe.add_argument("--file", help="inputs: .txt (one per line), .csv/.tsv (a column) or .jsonl (a field)")
    pipe.add_argument("--column", help="--file's column or JSON field (default: 'text', else a .csv's first column "
                                       "or a .jsonl's whole record)")
    pipe.add_argument("--top-k", type=int, help="how many results per input (classification, fill-mask, "
                                                "question-answering)")
    pipe.add_argument("--others", nargs="+", help="sentence-similarity: texts to compare against")
    pipe.add_argument("--question", action="append", help="question-answering: a question (repeat for several; "
                                                          "texts given as arguments are questions too)")
    pipe.add_argument("--context", help="question-answering: the text the questions are answered from")
    pipe.add_argument("--candidate-labels", action="append", metavar="LABELS",
                      help="zero-shot-classification: labels, comma-separated or the option repeated")
    pipe.add_argument("--hypothesis-template", type=_text,
                      help="zero-shot-classification: sentence with {} for the label (default 'This example is {}.'; "
                           "'This text is about {}.' for embedding models)")
    pipe.add_argument("--multi-label", action="store_true",
                      help="zero-shot-classification: score each label on its own (several may fit)")
    pipe.add_argument("--function-to-apply", choices=("softmax", "sigmoid", "none"),
                      help="text-classification: how logits become scores (default: sigmoid for multi-label "
                           "models, else softmax)")
    pipe.add_argument("--targets", action="append", metavar="WORDS",
                      help="fill-mask: score only these words (comma-separated or the option repeated)")
    pipe.add_argument("--aggregation-strategy", choices=("none", "simple", "first", "average", "max"),
                      help="token-classification: group word pieces into entities (default none: one row per "
                           "token)")
    pipe.add_argument("--stride", type=_positive_int,
                      help="token-classification: tokens shared by consecutive windows of a long text")
    pipe.add_argument("--doc-stride", type=_positive_int,
                      help="question-answering: tokens shared by consecutive windows of a long context")
    pipe.add_argument("--max-answer-len", type=_positive_int, help="question-answering: longest answer in tokens "
                                                                   "(default 15)")
    pipe.add_argument("--handle-impossible-answer", action="store_true",
                      help="question-answering: allow the empty answer when the context holds none")
    pipe.add_argument("--max-length", type=_positive_int,
                      help="tokens per input; longer inputs are truncated (default: the model's limit, at most 512)")
    pipe.add_argument("--max-new-tokens", type=_positive_int,
                      help="generated tokens at most (text-generation: default 50; translation, summarization, "
                           "text2text-generation: default 128)")
    pipe.add_argument("--seed", type=_seed, help="random seed for sampling (text-generation, --do-sample)")
    gen = pipe.add_argument_group("translation, summarization, text2text-generation (Hugging Face generate() names)")
    gen.add_argument("--num-beams", type=_positive_int, help="beam search with this many beams (default 1: greedy)")
    gen.add_argument("--min-new-tokens", type=int, help="no end-of-sequence before this many tokens")
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam search")
    gen.add_argument("--temperature", type=_positive_float, help="sampling temperature")
    gen.add_argument("--top-p", type=_positive_float, help="nucleus sampling: smallest token set with this mass")
    gen.add_argument("--repetition-penalty", type=_positive_float, help="divide seen tokens' logits (1 = off)")
    gen.add_argument("--length-penalty", type=_number, help="beam score = log-prob / length**this (default 1)")
    gen.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size")
    gen.add_argument("--early-stopping", choices=("true", "false", "never"),
                     help="beam search: stop at num_beams finished hypotheses (true), by the heuristic (false, "
                          "default) or never")
    gen.add_argument("--num-return-sequences", type=_positive_int, help="outputs per input (<= --num-beams)")
    gen.add_argument("--prefix", type=_text,
                     help="text put before every input (default: the T5 checkpoint's task prefix)")
    pipe.add_argument("--batch-size", type=_positive_int, default=32, help="inputs per forward pass")
    pipe.add_argument("--device", help="where the model runs: cpu (default), cuda, cuda:N or auto")
    pipe.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    pipe.set_defaults(func=cmd_pipeline)

    attn = sub.add_parser("attention", help="heatmap of a translation's cross-attention weights (PNG)",
                          description="Translate --source with an encoder-decoder model and draw which source "
                                      "tokens each output token attended to (cross-attention), for one layer and "
                                      "head, one layer averaged over heads, or all layers averaged (default).")
    attn.add_argument("model", help="a `dlforge train seq2seq` run or model folder, or a T5/BART folder")
    attn.add_argument("--source", required=True, help="the text to translate")
    attn.add_argument("--out", default="attention.png", help="PNG to write (default attention.png)")
    attn.add_argument("--layer", type=int, help="decoder layer (default: average of all layers)")
    attn.add_argument("--head", type=int, help="head within --layer (default: average of the heads)")
    attn.add_argument("--num-beams", type=_positive_int, default=1, help="beam search for the translation")
    attn.add_argument("--max-new-tokens", type=_positive_int, default=64, help="longest translation in tokens")
    attn.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    attn.set_defaults(func=cmd_attention)
    add_image_commands(sub)

    from .finetune import add_parser as add_finetune

    add_finetune(sub)

    demo = sub.add_parser("demo", help="train a small GPT on the bundled tiny Shakespeare and sample from it")
    demo.add_argument("--minutes", type=_positive_float, default=2.0, help="training time (default 2)")
    demo.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--eval-interval", type=_positive_int, default=250, help="steps between samples (default 250)")
    demo.add_argument("--seed", type=_seed, default=1337, help="random seed (default 1337)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)
    return parser


def _show_warnings() -> None:
    """The library's warnings (rows a reader skipped, ...) as "dlforge: warning: ..." lines on stderr."""
    logger = logging.getLogger("dlforge")
    if not any(getattr(h, "dlforge_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dlforge: warning: %(message)s"))
        handler.dlforge_cli = True
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is cmd_pipeline and not any(e.startswith("-") for e in extra):
        args.texts = [*args.texts, *extra]  # texts may follow the options: pipeline TASK --model DIR "text"
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _show_warnings()
    try:
        return args.func(args)
    except DlforgeError as e:
        if args.debug:
            raise
        print(f"dlforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ndlforge: interrupted; the last saved checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug:
            raise
        print(f"dlforge: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except Exception as e:  # an unexpected bug: still one line, with a way to see more
        if args.debug:
            raise
        print(f"dlforge: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
