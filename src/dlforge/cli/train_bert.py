"""`dlforge train bert`: masked-LM pretraining of a BERT encoder, from scratch or (with --init) continued
on your own text (domain-adaptive pretraining). A thin layer over `dlforge.training.mlm.train_masked_lm`."""

from __future__ import annotations

import argparse

from ..errors import DlforgeError
from .common import add_run_flags, positive_int, print_result, run_budget
from .names import BERT_PRESETS, BERT_TOKENIZERS


def cmd_train_bert(args) -> int:
    from ..settings import parse_overrides
    from ..training.mlm import field_types, train_masked_lm

    overrides = parse_overrides(args.set, field_types())
    overrides.update(run_budget(args))
    if args.data is None and not args.resume:
        raise DlforgeError("--data is required: give a UTF-8 text file (one text per line) or a folder of them")
    result = train_masked_lm(args.data, args.out, preset=args.preset, overrides=overrides, tokenizer=args.tokenizer,
                             vocab_size=args.vocab_size, init=args.init, resume=args.resume, seed=args.seed,
                             progress=not args.quiet, overwrite=args.overwrite)
    if result["initial_val_loss"] is not None:
        print(f"val loss before training: {result['initial_val_loss']:.4f}")
    print_result(result, args.out)
    return 0


def add_parser(families) -> argparse.ArgumentParser:
    """Add `bert` to the `train` sub-commands."""
    bert = families.add_parser(
        "bert", help="a BERT encoder by masked-LM pretraining (or continue a pretrained one on your text)",
        description="Pretrain a BERT encoder with masked language modelling on a UTF-8 text file or folder "
                    "(one text per line), or with --init continue a pretrained BERT-family model on it "
                    "(domain-adaptive pretraining). The result works with fill-mask and as --model of finetune.")
    bert.add_argument("--data", help="UTF-8 text file, or a folder of text files (one text per line)")
    bert.add_argument("--out", required=True, help="run folder for checkpoints, metrics.csv and loss.png")
    bert.add_argument("--preset", choices=BERT_PRESETS,
                      help="model size + hyperparameters for training from scratch (default: small)")
    bert.add_argument("--init", metavar="MODEL",
                      help="continue this pretrained BERT-family model (dlforge run or model folder, Hugging Face "
                           "folder or Hub id) instead of starting from scratch; its tokenizer is used")
    bert.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a model, data or training field, e.g. --set n_layer=6 --set max_length=256 "
                           "--set lr=3e-4 (repeatable)")
    bert.add_argument("--tokenizer", choices=BERT_TOKENIZERS,
                      help="tokenizer trained on --data: wordpiece (BERT, lower-cased) or bpe (RoBERTa-style "
                           "byte-level); default wordpiece")
    bert.add_argument("--vocab-size", type=positive_int, help="tokenizer vocabulary size (default: the preset's)")
    add_run_flags(bert)
    bert.set_defaults(func=cmd_train_bert)
    return bert
