"""`dlforge train seq2seq`: an encoder–decoder Transformer trained from scratch on line-aligned parallel text
(translation pairs, or documents and their summaries). A thin layer over
`dlforge.training.seq2seq.train_seq2seq`."""

from __future__ import annotations

import argparse

from ..errors import DlforgeError
from .common import add_run_flags, positive_int, print_result, run_budget
from .names import SEQ2SEQ_PRESETS


def cmd_train_seq2seq(args) -> int:
    from ..settings import parse_overrides
    from ..training.seq2seq import field_types, train_seq2seq

    overrides = parse_overrides(args.set, field_types())
    overrides.update(run_budget(args))
    if args.separate_vocab:
        overrides["joint_vocabulary"] = False
    if args.init is not None and (args.preset or args.vocab_size or args.separate_vocab):
        raise DlforgeError("--init fine-tunes a pretrained model with its own shape and tokenizer: leave out --preset, "
                           "--vocab-size and --separate-vocab")
    result = train_seq2seq(args.source, args.target, args.out, valid_source=args.valid_source,
                           valid_target=args.valid_target, preset=args.preset or "multi30k", overrides=overrides,
                           vocab_size=args.vocab_size, init=args.init, resume=args.resume, seed=args.seed,
                           progress=not args.quiet, overwrite=args.overwrite)
    print_result(result, args.out)
    if result["scores"]:
        print("last evaluation: " + ", ".join(f"{k} {v}" for k, v in result["scores"].items()))
    return 0


def add_parser(families) -> argparse.ArgumentParser:
    """Add `seq2seq` to the `train` sub-commands."""
    parser = families.add_parser(
        "seq2seq", help="an encoder-decoder Transformer on parallel text (translation, summarization)",
        description="Train an encoder-decoder Transformer from scratch on two line-aligned UTF-8 files (plain "
                    "or .gz): line i of --target is the output for line i of --source. A joint byte-level BPE "
                    "tokenizer is trained on both. Validation BLEU and chrF (sacrebleu) are computed at every "
                    "evaluation. The result works with `dlforge pipeline translation --model RUN`.")
    parser.add_argument("--source", help="source-side file, one sentence (or document) per line")
    parser.add_argument("--target", help="target-side file, line-aligned with --source")
    parser.add_argument("--valid-source", help="validation sources (default: hold out part of the training pairs)")
    parser.add_argument("--valid-target", help="validation targets, line-aligned with --valid-source")
    parser.add_argument("--out", required=True, help="run folder for checkpoints, metrics.csv, loss.png, "
                                                     "eval_scores.json")
    parser.add_argument("--preset", choices=SEQ2SEQ_PRESETS,
                        help="model size + hyperparameters for training from scratch (default: multi30k, a 3+3-layer "
                             "d=256 Transformer)")
    parser.add_argument("--init", metavar="MODEL",
                        help="fine-tune this pretrained encoder-decoder instead (a dlforge seq2seq run or model, or a "
                             "Hugging Face T5 / BART folder or hub id), with its tokenizer; default lr 1e-4")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a model, data or training field, e.g. --set d_model=512 --set "
                             "max_tokens=8000 --set task=summarization --set eval_beams=4 (repeatable)")
    parser.add_argument("--vocab-size", type=positive_int, help="BPE vocabulary size (default: the preset's)")
    parser.add_argument("--separate-vocab", action="store_true",
                        help="one BPE vocabulary per side instead of a joint one (e.g. for unrelated scripts)")
    add_run_flags(parser)
    parser.set_defaults(func=cmd_train_seq2seq)
    return parser
