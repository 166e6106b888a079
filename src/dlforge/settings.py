"""Checking the values of settings dataclasses (model configs, TrainConfig, data configs) before any work starts.

Settings arrive from JSON files (config.json, run.json), from `--set KEY=VALUE` and from Python calls, so a
value can have the wrong type, be negative, NaN or infinite. `check_fields` checks every field against its
annotation and `check_range` against bounds, each failing with one line that names the field, what it must
be and what it got. `parse_overrides` is the one reader of `--set`/`--option KEY=VALUE` text: each value is
typed from the field it sets (the dataclass field's resolved type, or a task's `__init__` keyword).
"""

from __future__ import annotations

import dataclasses
import inspect
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
    if origin is typing.Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(kind))
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


# ------------------------------------------------------------------------------------ KEY=VALUE text
# `--set KEY=VALUE` (training recipes) and `--option KEY=VALUE` (fine-tuning tasks) arrive as text; each value is
# read as the type its field declares, so `--set n_layer=6` is the int 6 and `--set bias=false` the bool False.
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_NONE = ("none", "null")


def setting_types(*owners, exclude=()) -> dict[str, object]:
    """{name: type} of what `--set`/`--option` may change: every field of each settings dataclass, every keyword
    of a plain class's `__init__`, or the entries of a ready {name: type} mapping, minus `exclude`."""
    types_by_name: dict[str, object] = {}
    for owner in owners:
        if isinstance(owner, dict):
            found = dict(owner)
        elif dataclasses.is_dataclass(owner):
            hints = typing.get_type_hints(owner)
            found = {f.name: hints[f.name] for f in fields(owner)}
        else:  # a class configured through its __init__ keywords (a fine-tuning task)
            hints = typing.get_type_hints(owner.__init__)
            found = {name: hints.get(name, str) for name in inspect.signature(owner.__init__).parameters
                     if name != "self"}
        types_by_name.update({name: kind for name, kind in found.items() if name not in exclude})
    return types_by_name


def parse_value(text: str, kind):
    """`text` read as a value of type `kind` (bool, int, float, str, Literal, Optional/Union, list/tuple of those:
    comma-separated), or ValueError saying what was expected."""
    origin = typing.get_origin(kind)
    lowered = text.strip().lower()
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if type(None) in options and lowered in _NONE:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return parse_value(text, option)
            except ValueError:
                continue
        raise ValueError(_describe(kind))
    if origin is typing.Literal:
        for choice in typing.get_args(kind):
            if text.strip() == str(choice):
                return choice
        raise ValueError(_describe(kind))
    if origin in (list, tuple):
        item = typing.get_args(kind)[0]
        try:
            return [parse_value(part, item) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"comma-separated values, each {_describe(item)}") from None
    if kind is type(None):
        if lowered in _NONE:
            return None
        raise ValueError("none")
    if kind is bool:
        if lowered in _TRUE + _FALSE:
            return lowered in _TRUE
        raise ValueError("true or false")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("a whole number") from None
    if kind is float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("a number") from None
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return value
    if kind is str:
        return text
    raise ValueError(f"a {getattr(kind, '__name__', kind)}, which cannot be given as text")


def parse_overrides(pairs, *owners, exclude=(), flag: str = "--set") -> dict:
    """["n_layer=6", "lr=3e-4"] -> {"n_layer": 6, "lr": 0.0003}: each value typed from its field (see
    `setting_types` for what `owners` may be). An unknown key names the valid ones; a value of the wrong type
    says what was expected; both as one-line DlforgeErrors naming `flag`."""
    known = setting_types(*owners, exclude=exclude)
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise DlforgeError(f"{flag} {pair!r}: write it as KEY=VALUE (valid keys: {', '.join(sorted(known))})")
        if key not in known:
            raise DlforgeError(f"{flag} {key}: unknown key; valid keys: {', '.join(sorted(known)) or 'none'}")
        try:
            out[key] = parse_value(value.strip(), known[key])
        except ValueError as e:
            raise DlforgeError(f"{flag} {key}={value.strip()}: expected {e}, got {value.strip()!r}") from None
    return out
