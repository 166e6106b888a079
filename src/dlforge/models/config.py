"""What every model config shares: building it from a dict (config.json) with unknown keys named."""

from __future__ import annotations

from dataclasses import fields

from ..errors import DlforgeError


class ModelConfig:
    """Mixin for the dataclass configs of the model families."""

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            family = cls.__name__.removesuffix("Config").upper()  # GPTConfig -> GPT, BertConfig -> BERT
            raise DlforgeError(f"unknown {family} config keys: {', '.join(unknown)}")
        return cls(**d)
