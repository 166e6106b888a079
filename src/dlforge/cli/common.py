"""What every `dlforge` command shares: the one-line argparse errors, the value types of flags, the run flags
(budget, resume, seed, output level), deprecated flag aliases and the end-of-run line.

This module, like every `cli` module's top level, imports neither torch nor anything that does: building the
parsers (`dlforge --help`, `dlforge VERB --help`) stays fast, and a command imports its library code when it runs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line ("dlforge train gpt: error: ... (see --help)")."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------- flag values
def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def seed(text: str) -> int:
    value = whole_number(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {value}")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def escaped_text(value: str) -> str:
    """A text flag with the shell-friendly escapes \\n, \\t, \\r and \\\\ decoded (`--stop "\\n\\n"`), the same
    way for every text flag that takes them; other backslashes stay as written."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], value)


# ------------------------------------------------------------------------------- deprecated names
class DeprecatedAlias(argparse.Action):
    """An old flag name that still works: it stores into the new flag's dest and says, on stderr, which name to
    use instead. Hidden from --help so that the help shows one vocabulary."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"dlforge: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, value_type) -> None:
    """`old` keeps working as `new` (same dest and value type), with a deprecation line when used."""
    parser.add_argument(old, dest=dest, type=value_type, action=DeprecatedAlias, new=new, help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------------ shared flags
def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """--quiet / --verbose (the log level every command prints at; --quiet also hides progress bars) and the
    hidden --debug (tracebacks), on every command."""
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--quiet", action="store_true",
                       help="print only warnings and errors (no progress bar, no progress lines)")
    level.add_argument("--verbose", action="store_true", help="also print debugging details")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


STEPS_HELP = "optimizer steps (the LR schedule ends here)"


def add_budget_flags(parser: argparse.ArgumentParser, steps_help: str = STEPS_HELP) -> None:
    """--max-steps (optimizer steps, the one name for them on every command) and --minutes."""
    parser.add_argument("--max-steps", type=positive_int, help=steps_help)
    parser.add_argument("--minutes", type=positive_float, help="wall-clock budget; the schedule is fitted to it")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training command shares: the budget (--max-steps, --minutes), --resume, --overwrite,
    --on-nan, --seed, --tensorboard and the output flags. `run_budget(args)` turns the budget into Trainer
    overrides."""
    add_budget_flags(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                        "(a new --max-steps/--minutes stretches the rest of the learning-rate schedule over it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the run into a non-empty --out that holds no dlforge run "
                             "(same-named files replaced)")
    parser.add_argument("--on-nan", choices=("stop", "skip"),
                        help="a NaN/inf loss or gradient: stop, keeping the last good checkpoint (default), or skip "
                             "that batch")
    parser.add_argument("--seed", type=seed, help="random seed (default 1337)")
    add_tensorboard_flag(parser)
    add_output_flags(parser)


def add_tensorboard_flag(parser: argparse.ArgumentParser) -> None:
    """--tensorboard: TensorBoard logs only when asked for (default None: not given, so not a setting to pass)."""
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also log the metrics for TensorBoard in OUT/tensorboard "
                             "(pip install 'dlforge[tensorboard]')")


def run_budget(args) -> dict:
    """--max-steps / --minutes / --on-nan / --tensorboard as Trainer overrides (only those given)."""
    budget = {"max_steps": args.max_steps, "max_minutes": args.minutes, "on_nan": args.on_nan,
              "tensorboard": args.tensorboard}
    return {key: value for key, value in budget.items() if value is not None}


def print_result(result: dict, out) -> None:
    """The end-of-training line: why it stopped, where, the best validation loss and where the model is."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    best = result["best_val_loss"]
    print(f"done: {result['stop_reason']}; step {result['step']}, best val loss {best:.4f}, "
          f"{result['elapsed_s']:.0f} s. Model: {Path(out) / 'checkpoints' / 'best'}")
