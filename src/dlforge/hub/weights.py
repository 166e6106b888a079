"""Reading and writing weight files safely.

Weights are loaded only from safetensors (plain or sharded with an index) or from
`pytorch_model.bin` through `torch.load(weights_only=True)`, which cannot run code. Problems a
user can fix (missing file, truncated download, wrong shapes, unexpected keys) become one-line
`DlforgeError`s that name the file or the keys.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DlforgeError
from ..io import atomic_path
from ..paths import hf_cache_blobs, model_file, resolve_inside

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def find_weight_file(directory: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _load_one(path: Path):
    """What a weight file holds: safetensors, or a PyTorch pickle of plain data (torch.load(weights_only=True)
    refuses any other object, so nothing in the file runs)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlforgeError(f"cannot read weights from {path}: the file is corrupt or truncated ({first_line}); "
                           "re-download or re-save it, or use an earlier checkpoint") from e
    except (pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError) as e:
        # torch's own message advises turning the safety off: neither it nor its traceback is shown
        raise DlforgeError(f"{path} holds something other than plain tensors ({type(e).__name__}), and dlforge "
                           "will not run code from a model folder: re-save the weights as safetensors") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """`_load_one`, refusing anything but a dict of named tensors."""
    state = _load_one(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        what = (f"a value of type {type(state).__name__}, not a dict of" if not isinstance(state, dict)
                else "entries other than")
        raise DlforgeError(f"{path} holds {what} named tensors: re-save the model's state dict, preferably as "
                           "safetensors")
    return state


def _shard_names(index: Path) -> list[str]:
    """The shard file names an index lists, after checking its shape (weight_map: tensor name -> file name)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise DlforgeError(f"{index} is not a valid shard index (a JSON object with a 'weight_map'): "
                           "re-download it") from e
    if (not isinstance(weight_map, dict) or not weight_map
            or not all(isinstance(shard, str) for shard in weight_map.values())):
        raise DlforgeError(f"{index} is not a valid shard index: its 'weight_map' must map each tensor name to "
                           "a shard file name; re-download it")
    return sorted(set(weight_map.values()))


def load_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or shards listed in an index)."""
    directory = Path(directory)
    path = find_weight_file(directory)
    if path is None:
        raise DlforgeError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")
    model_file(path)  # not a link out of the folder (the shards are checked by name below)
    if not path.name.endswith(".index.json"):
        return _load_tensors(path)
    state: dict[str, torch.Tensor] = {}
    for shard in _shard_names(path):
        # a name that leaves the folder is refused before anything is looked up there
        resolve_inside(directory, shard, f"shard file listed in {path.name}", links_into=hf_cache_blobs(directory))
        if not (directory / shard).is_file():
            raise DlforgeError(f"shard {shard} listed in {path.name} is missing from {directory}")
        state.update(_load_tensors(directory / shard))  # by its own name: a cache blob has no suffix
    return state


def deduplicated_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """State dict with each shared tensor kept once (safetensors stores no aliases); also returns the names
    that were dropped (e.g. a tied lm_head.weight), which loading then allows to be missing."""
    state, seen, dropped = {}, {}, []
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            dropped.append(name)
            continue
        seen[key] = name
        state[name] = tensor
    return state, dropped


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

