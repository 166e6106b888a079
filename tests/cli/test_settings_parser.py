"""`dlforge.settings.parse_overrides`: the one reader of `--set`/`--option KEY=VALUE`, typed from the fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from dlforge.errors import DlforgeError
from dlforge.models.gpt import GPTConfig
from dlforge.settings import parse_overrides, setting_types
from dlforge.training.lm import field_types
from dlforge.training.trainer import TrainConfig


@dataclass
class Example:
    layers: int = 2
    rate: float = 0.1
    fused: bool = False
    name: str = "x"
    mode: Literal["fast", "exact"] = "fast"
    limit: float | None = None
    sizes: tuple[int, ...] = (1, 2)
    widths: list[float] = field(default_factory=list)


class Task:
    def __init__(self, stride: int | None = None, column: str = "text"):
        self.stride, self.column = stride, column


def test_values_are_typed_from_the_fields():
    parsed = parse_overrides(["layers=6", "rate=3e-4", "fused=true", "name=12", "mode=exact", "limit=none",
                              "sizes=4,8", "widths=0.5, 1"], Example)
    assert parsed == {"layers": 6, "rate": 3e-4, "fused": True, "name": "12", "mode": "exact", "limit": None,
                      "sizes": [4, 8], "widths": [0.5, 1.0]}
    assert type(parsed["rate"]) is float and type(parsed["layers"]) is int
    assert parse_overrides(["fused=no", "limit=2", "rate=1"], Example) == {"fused": False, "limit": 2.0, "rate": 1.0}
    assert parse_overrides(["stride=64", "column=a=b"], Task, flag="--option") == {"stride": 64, "column": "a=b"}
    assert parse_overrides(None, Example) == {}


@pytest.mark.parametrize("pair, message", [
    ("layers=six", "--set layers=six: expected a whole number, got 'six'"),
    ("layers=2.5", "expected a whole number"),
    ("rate=fast", "--set rate=fast: expected a number, got 'fast'"),
    ("rate=inf", "expected a finite number"),
    ("fused=maybe", "expected true or false"),
    ("mode=slow", "--set mode=slow: expected one of fast, exact, got 'slow'"),
    ("limit=big", "expected a number or none"),
    ("sizes=1,x", "expected comma-separated values, each a whole number"),
    ("depth=3", "--set depth: unknown key; valid keys: fused, layers, limit, mode, name, rate, sizes, widths"),
    ("layers", "--set 'layers': write it as KEY=VALUE"),
])
def test_bad_pairs_are_one_line_errors(pair, message):
    with pytest.raises(DlforgeError, match=re.escape(message)) as caught:
        parse_overrides([pair], Example)
    assert "\n" not in str(caught.value)


def test_recipe_keys_are_their_config_fields_with_resolved_types():
    types = field_types()
    assert "vocab_size" not in types and types["n_layer"] is int and types["lr"] is float
    assert types["min_lr"] == (float | None) and types["tensorboard"] is bool
    assert set(types) == set(setting_types(GPTConfig, TrainConfig)) - {"vocab_size"}
    assert parse_overrides(["n_layer=6", "bias=false", "positional=rotary", "tie-embeddings=0"], types) == {
        "n_layer": 6, "bias": False, "positional": "rotary", "tie_embeddings": False}
