"""Text-model commands: `dlforge train gpt`, `generate`, `info`, `attention` and `demo`. Each is a thin layer over
the library functions Python users call, imported when the command runs:
  train gpt  -> dlforge.training.lm.train_language_model
  generate   -> dlforge.text.generation.generate_text
  info       -> dlforge.hub.load_pretrained + the run's metrics
  attention  -> dlforge.text.attention_map (cross-attention heatmap of a translation)
  demo       -> train_language_model on the bundled tiny Shakespeare, with samples as it goes
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from importlib import resources
from pathlib import Path

from ..errors import DlforgeError
from .common import (
    add_output_flags,
    add_run_flags,
    escaped_text,
    number,
    positive_float,
    positive_int,
    print_result,
    run_budget,
    seed,
)
from .names import GPT_PRESETS, GPT_TOKENIZERS


# ------------------------------------------------------------------------------------------ train
def cmd_train_gpt(args) -> int:
    from ..settings import parse_overrides
    from ..training.lm import field_types, train_language_model

    overrides = parse_overrides(args.set, field_types())
    overrides.update(run_budget(args))
    if args.data is None and not args.resume:
        raise DlforgeError("--data is required: give a UTF-8 text file or a folder of text files")
    result = train_language_model(args.data, args.out, preset=args.preset, overrides=overrides,
                                  tokenizer=args.tokenizer, vocab_size=args.vocab_size, resume=args.resume,
                                  seed=args.seed, progress=not args.quiet, overwrite=args.overwrite)
    print_result(result, args.out)
    return 0


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

        from ..hub import read_json_object

        run = read_json_object(run_file, "the run folder is damaged")
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
    print_result(result, out)
    print(f"Metrics: {out / 'metrics.csv'}   loss curve: {out / 'loss.png'}")
    print(f"Sample more: dlforge generate {out} --prompt 'ROMEO:' --max-new-tokens 300")
    return 0


# ----------------------------------------------------------------------------------------- parsers
def add_train_parser(families) -> None:
    """Add `gpt` to the `train` sub-commands."""
    gpt = families.add_parser("gpt", help="a GPT (decoder-only) language model on your text",
                              description="Train a GPT language model on a UTF-8 text file or folder.")
    gpt.add_argument("--data", help="UTF-8 text file, or a folder of text files")
    gpt.add_argument("--out", required=True, help="run folder for checkpoints, metrics.csv and loss.png")
    gpt.add_argument("--preset", default="shakespeare", choices=GPT_PRESETS,
                     help="model size + hyperparameters (default: shakespeare)")
    gpt.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a model or training field, e.g. --set n_layer=6 --set lr=3e-4 (repeatable)")
    gpt.add_argument("--tokenizer", default="char", choices=GPT_TOKENIZERS,
                     help="char or byte-level bpe (default: char)")
    gpt.add_argument("--vocab-size", type=positive_int, help="BPE vocabulary size (default 4096)")
    add_run_flags(gpt)
    gpt.set_defaults(func=cmd_train_gpt)


def add_parsers(sub) -> None:
    """Add `generate`, `info`, `attention` and `demo` to the top-level sub-commands."""
    gen = sub.add_parser("generate", help="continue a prompt with a trained GPT or a Hugging Face GPT-2",
                         description="Generate text from a dlforge run/model folder or a Hugging Face GPT-2 folder.")
    gen.add_argument("model", help="dlforge run folder, model folder, or Hugging Face GPT-2 folder")
    gen.add_argument("--prompt", type=escaped_text, default="\n",
                     help="text to continue (default: a newline); \\n is a newline, \\t a tab")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    gen.add_argument("--temperature", type=number, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    gen.add_argument("--top-k", type=positive_int, help="sample only from the k most likely tokens")
    gen.add_argument("--top-p", type=number, help="nucleus sampling: smallest set with probability >= p, in (0, 1]")
    gen.add_argument("--repetition-penalty", type=number, default=1.0, help="> 1 discourages repeats (default 1)")
    gen.add_argument("--stop", type=escaped_text, action="append",
                     help="stop when this text appears (repeatable; \\n is a newline: --stop '\\n\\n')")
    gen.add_argument("--num-samples", type=positive_int, default=1, help="independent samples (default 1)")
    gen.add_argument("--seed", type=seed, help="random seed for reproducible sampling")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")
    gen.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slower)")
    add_output_flags(gen)
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("info", help="describe a run or model folder")
    info.add_argument("model", help="dlforge run folder, model folder, or Hugging Face folder")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_output_flags(info)
    info.set_defaults(func=cmd_info)

    attn = sub.add_parser("attention", help="heatmap of a translation's cross-attention weights (PNG)",
                          description="Translate --source with an encoder-decoder model and draw which source "
                                      "tokens each output token attended to (cross-attention), for one layer and "
                                      "head, one layer averaged over heads, or all layers averaged (default).")
    attn.add_argument("model", help="a `dlforge train seq2seq` run or model folder, or a T5/BART folder")
    attn.add_argument("--source", required=True, help="the text to translate")
    attn.add_argument("--out", default="attention.png", help="PNG to write (default attention.png)")
    attn.add_argument("--layer", type=int, help="decoder layer (default: average of all layers)")
    attn.add_argument("--head", type=int, help="head within --layer (default: average of the heads)")
    attn.add_argument("--num-beams", type=positive_int, default=1, help="beam search for the translation")
    attn.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest translation in tokens")
    add_output_flags(attn)
    attn.set_defaults(func=cmd_attention)
    demo = sub.add_parser("demo", help="train a small GPT on the bundled tiny Shakespeare and sample from it")
    demo.add_argument("--minutes", type=positive_float, default=2.0, help="training time (default 2)")
    demo.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--eval-interval", type=positive_int, default=250, help="steps between samples (default 250)")
    demo.add_argument("--seed", type=seed, default=1337, help="random seed (default 1337)")
    add_output_flags(demo)
    demo.set_defaults(func=cmd_demo)
