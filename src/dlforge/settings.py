"""Checking the values of settings dataclasses (model configs, TrainConfig, data configs) before any work starts.

Settings arrive from JSON files (config.json, run.json), from `--set KEY=VALUE` and from Python calls, so a
value can have the wrong type, be negative, NaN or infinite. `check_fields` checks every field against its
annotation and `check_range` against bounds, each failing with one line that names the field, what it must
be and what it got.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields

from .errors import DlforgeError

_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _describe(kind) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(kind)[0])}"
    if kind is type(None):
        return "none"
    return _NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _conform(value, kind):
    """`value` as a value of type `kind` (an int is a float; a float is no int), or raise TypeError/ValueError."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        not_finite = False
        for option in typing.get_args(kind):
            try:
                return _conform(value, option)
            except TypeError:
                continue
            except ValueError:
                not_finite = True
        raise ValueError if not_finite else TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        item = typing.get_args(kind)[0]
        return type(value)(_conform(v, item) for v in value)
    if kind is type(None):
        if value is not None:
            raise TypeError
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if not math.isfinite(value):
            raise ValueError
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    return value  # other annotations (dicts, classes) are the caller's to check


def check_fields(settings) -> None:
    """Check (and normalise: ints given for floats become floats) every field of a settings dataclass."""
    hints = typing.get_type_hints(type(settings))
    owner = type(settings).__name__
    for field in fields(settings):
        value = getattr(settings, field.name)
        try:
            conformed = _conform(value, hints[field.name])
        except TypeError:
            raise DlforgeError(f"{owner}: {field.name} must be {_describe(hints[field.name])}, got {value!r}") \
                from None
        except ValueError:
            raise DlforgeError(f"{owner}: {field.name} must be a finite number, got {value!r}") from None
        if conformed is not value:
            object.__setattr__(settings, field.name, conformed)


def check_range(settings, at_least: dict | None = None, above: dict | None = None, below: dict | None = None,
                at_most: dict | None = None) -> None:
    """Check numeric fields against bounds ({field: bound}); fields that are None are not checked."""
    owner = type(settings).__name__
    tests = ((at_least, lambda v, b: v >= b, ">="), (above, lambda v, b: v > b, ">"),
             (below, lambda v, b: v < b, "<"), (at_most, lambda v, b: v <= b, "<="))
    for bounds, holds, sign in tests:
        for name, bound in (bounds or {}).items():
            value = getattr(settings, name)
            if value is not None and not holds(value, bound):
                raise DlforgeError(f"{owner}: {name} must be {sign} {bound}, got {value!r}")


def check_model_config(config, at_least_one: tuple[str, ...] = ()) -> None:
    """A model config's generic checks: types, every number >= 0, dropout-like fields below 1, and the named
    sizes (layers, widths, heads, vocabulary) >= 1."""
    check_fields(config)
    numbers = [f.name for f in fields(config)
               if isinstance(getattr(config, f.name), (int, float)) and not isinstance(getattr(config, f.name), bool)]
    check_range(config, at_least={**dict.fromkeys(numbers, 0), **dict.fromkeys(at_least_one, 1)},
                below={name: 1 for name in numbers if "dropout" in name})
