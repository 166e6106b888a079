"""Reading and writing weight files safely.

Weights are loaded only from safetensors (plain or sharded with an index) or from
`pytorch_model.bin` through `torch.load(weights_only=True)`, which cannot run code. Problems a
user can fix (missing file, truncated download, wrong shapes, unexpected keys) become one-line
`DlforgeError`s that name the file or the keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DlforgeError
from ..io import atomic_path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def find_weight_file(directory: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlforgeError(f"cannot read weights from {path}: the file is corrupt or truncated ({first_line}); "
                           "re-download or re-save it, or use an earlier checkpoint") from e


def load_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or shards listed in an index)."""
    directory = Path(directory)
    path = find_weight_file(directory)
    if path is None:
        raise DlforgeError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise DlforgeError(f"{path} is not a valid shard index (needs a 'weight_map'): {e}") from e
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise DlforgeError(f"shard {shard} listed in {path.name} is missing from {directory}")
            state.update(_load_one(directory / shard))
        return state
    return _load_one(path)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write tensors to a safetensors file atomically; tied (shared) tensors must be removed first."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
              allowed_missing: tuple[str, ...] = ()) -> None:
    """Copy `state` into `model`, naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in allowed_missing]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                   for k in state if k in own and state[k].shape != own[k].shape]
    def listing(keys):
        return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} weight(s): {listing(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch (checkpoint vs model): {', '.join(wrong_shape[:5])}")
    if problems:
        raise DlforgeError(f"weights in {source} do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def fuse_qkv(parts_by_key: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{fused c_attn key: {"q", "k", "v": tensor}} -> {key: cat(q, k, v)}: Hugging Face checkpoints keep the
    query/key/value projections apart, dlforge's attention holds them as one matrix. A missing or mis-shaped part is
    reported by name."""
    fused = {}
    for key, parts in parts_by_key.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing or len({t.shape for t in parts.values()}) != 1:
            found = {p: tuple(t.shape) for p, t in parts.items()}
            raise DlforgeError(f"checkpoint's query/key/value weights for {key} are damaged: "
                               f"missing {missing or 'none'}, shapes {found}")
        fused[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return fused

