"""Reading the JSON files of model folders and run folders (config.json, generation_config.json,
modules.json, run.json) with one-line errors for a damaged file."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DlforgeError
from ..paths import model_file


def read_json_object(path: Path, damaged: str = "the checkpoint is damaged", expected: type = dict):
    """A JSON file that must hold an object (or, with `expected=list`, an array); anything else is a one-line
    DlforgeError naming the file and ending with `damaged` (what to do). A link out of the folder is refused
    (`model_file`)."""
    try:
        value = json.loads(model_file(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlforgeError(f"{path} is not valid JSON ({e}): {damaged}") from e
    if not isinstance(value, expected):
        names = {dict: "an object", list: "an array", str: "a string", bool: "true or false", type(None): "null"}
        wanted = "a JSON object of settings" if expected is dict else f"a JSON {names[expected].split()[1]}"
        raise DlforgeError(f"{path} holds {names.get(type(value), 'a number')}, not {wanted}: {damaged}")
    return value
