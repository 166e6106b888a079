"""Helpers for the checkpoint-loading tests: damage a saved checkpoint's weights or config in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file


def edit_checkpoint_weights(directory: Path, edit) -> None:
    """Apply `edit(state_dict)` to directory/model.safetensors and write it back."""
    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def edit_checkpoint_config(directory: Path, edit) -> None:
    """Apply `edit(config_dict)` to directory/config.json and write it back."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def edit_weights():
    return edit_checkpoint_weights


@pytest.fixture(scope="session")
def edit_config():
    return edit_checkpoint_config
