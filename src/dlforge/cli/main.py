"""The `dlforge` command line: the top-level parser, the output level and the one-line errors.

Every command is a thin layer over a library function (the same code Python users call), defined in the module
of its family:
  train gpt, generate, info, attention, demo               -> cli/text.py
  train bert                                               -> cli/train_bert.py
  train seq2seq                                            -> cli/train_seq2seq.py
  train ae|vae|gan|diffusion|classifier|vit|resnet, sample, img2img, inpaint, outpaint, noise-strip, anomaly,
  latent-plot, interpolate, adapt                          -> cli/images.py
  finetune, lr-find                                        -> cli/finetune.py
  pipeline                                                 -> cli/pipeline.py
Those modules share cli/common.py (flag types, run flags) and cli/names.py (choices); none imports torch at its top,
so the parsers build in a few milliseconds and a command imports the library code it runs.

Errors the user can fix print one line and exit with status 2; `--debug` shows the traceback. Library messages
go through the "dlforge" logger: info by default, `--quiet` warnings and errors only, `--verbose` debug too.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import DlforgeError
from . import finetune, images, pipeline, text, train_bert, train_seq2seq
from .common import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dlforge", description="Readable, fast deep-learning reference models.")
    parser.add_argument("--version", action="version", version=f"dlforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model from scratch (or continue pretraining one)")
    families = train.add_subparsers(dest="family", metavar="FAMILY")
    text.add_train_parser(families)
    train_bert.add_parser(families)
    train_seq2seq.add_parser(families)
    images.add_train_parsers(families)

    text.add_parsers(sub)  # generate, info, attention, demo
    pipeline.add_parser(sub)
    images.add_parsers(sub)
    finetune.add_parser(sub)
    return parser


class _LogFormatter(logging.Formatter):
    """Library messages as the CLI always printed them: info lines as they are, warnings and errors prefixed."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"dlforge: error: {message}"
        if record.levelno >= logging.WARNING:
            return f"dlforge: warning: {message}"
        return message


class _TqdmHandler(logging.StreamHandler):
    """Info lines to stdout through tqdm.write (a progress bar on the terminal stays whole), warnings and errors to
    stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
        except Exception:
            self.handleError(record)


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The "dlforge" logger's level (--quiet: warnings and errors; --verbose: debug; default info) and one handler
    that prints as the CLI does (set again on every call, so in-process tests see their own streams)."""
    logger = logging.getLogger("dlforge")
    for handler in [h for h in logger.handlers if getattr(h, "dlforge_cli", False)]:
        logger.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(_LogFormatter())
    handler.dlforge_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is pipeline.cmd_pipeline and not any(e.startswith("-") for e in extra):
        args.texts = [*args.texts, *extra]  # texts may follow the options: pipeline TASK --model DIR "text"
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
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
