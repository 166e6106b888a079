"""Reading the files a tokenizer folder may hold besides the vocabulary: JSON settings and the special tokens that
special_tokens_map.json / tokenizer_config.json name (as transformers writes them), with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from dlforge.errors import DlforgeError
from dlforge.paths import model_file

from .base import ROLES


def token_string(value: object) -> str | None:
    # transformers writes special tokens either as plain strings or as AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_json_settings(path: Path) -> dict:
    try:
        data = json.loads(model_file(path).read_text(encoding="utf-8"))  # not a link out of the folder
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DlforgeError(f"cannot read {path} as JSON ({message}); re-save or re-download it") from None
    if not isinstance(data, dict):  # every tokenizer file is an object of settings
        raise DlforgeError(f"{path} holds a JSON {type(data).__name__}, not an object; re-save or re-download it")
    return data


def configured_special_tokens(directory: Path) -> dict[str, str] | None:
    """Special tokens from special_tokens_map.json, overridden by tokenizer_config.json."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (directory / name).is_file():
            config = read_json_settings(directory / name)
            for role in ROLES:
                token = token_string(config.get(f"{role}_token"))
                if token is not None:
                    found[role] = token
    return found or None


def invalid_file_error(path: Path, exc: Exception) -> DlforgeError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DlforgeError(f"{path} is not a valid tokenizer file ({message}); re-save or re-download it")
