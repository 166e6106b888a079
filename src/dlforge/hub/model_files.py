"""Writing a dlforge model folder's files: config.json (kind, version, the config's fields), model.safetensors
(tied weights stored once) and the tokenizer's files.

File-level, below the model classes: the Trainer writes checkpoints with it without importing every model family,
and `dlforge.models.save_pretrained` wraps it in an atomic folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..io import atomic_write_json
from .weights import deduplicated_state_dict, save_state_dict


def write_model_files(model: torch.nn.Module, directory: Path, tokenizer=None) -> None:
    """Write config, weights and tokenizer into an existing directory (each file atomically)."""
    state, _ = deduplicated_state_dict(model)
    save_state_dict(state, directory / "model.safetensors")
    atomic_write_json(directory / "config.json", {
        "dlforge_kind": model.kind, "dlforge_version": __version__, "config": asdict(model.config)})
    if tokenizer is not None:
        tokenizer.save(directory)
