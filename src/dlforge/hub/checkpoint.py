"""dlforge's own model directory format, and loading any supported directory by what it holds.

A dlforge model directory holds:
  config.json        {"dlforge_kind": "gpt", "dlforge_version": ..., "config": {...dataclass fields}}
  model.safetensors  the weights (a tensor shared by two names, e.g. tied embeddings, stored once)
  tokenizer files    whatever the tokenizer saves (tokenizer.json, tokenizer_config.json)

`load_pretrained(path)` accepts such a directory, a training run folder (it picks the best, else
the latest checkpoint), or a Hugging Face checkpoint directory of a supported architecture
(GPT-2, BERT, RoBERTa, DistilBERT, T5, BART, ViT, ResNet).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..errors import DlforgeError
from ..io import atomic_directory, atomic_write_json
from .weights import load_into, load_state_dict, save_state_dict


def deduplicated_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """State dict with each shared tensor kept once; also returns the names that were dropped."""
    state, seen, dropped = {}, {}, []
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            dropped.append(name)
            continue
        seen[key] = name
        state[name] = tensor
    return state, dropped


def write_model_files(model: torch.nn.Module, directory: Path, tokenizer=None) -> None:
    """Write config, weights and tokenizer into an existing directory (each file atomically)."""
    state, _ = deduplicated_state_dict(model)
    save_state_dict(state, directory / "model.safetensors")
    atomic_write_json(directory / "config.json", {
        "dlforge_kind": model.kind, "dlforge_version": __version__, "config": asdict(model.config)})
    if tokenizer is not None:
        tokenizer.save(directory)


def save_pretrained(model: torch.nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Save a model (and tokenizer) as a dlforge model directory, replacing it atomically."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer)
    return directory


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory itself, the best/latest checkpoint inside a training run folder, or (for a string
    that is no existing path but reads like `org/name[@revision]`) the Hugging Face Hub snapshot of that id."""
    if isinstance(path, str) and not Path(path).exists():
        from .download import hub_snapshot, parse_hub_id

        if parse_hub_id(path) is not None:
            path = hub_snapshot(path)
    path = Path(path)
    if not path.exists():
        raise DlforgeError(f"{path} does not exist: give a dlforge run folder, a model directory, a checkpoint "
                           "or a Hugging Face Hub id (org/name)")
    if not path.is_dir():
        raise DlforgeError(f"{path} is a file: give the directory that holds config.json and the weights")
    checkpoints = path / "checkpoints"
    if not (path / "config.json").is_file() and checkpoints.is_dir():
        if (checkpoints / "best" / "config.json").is_file():
            return checkpoints / "best"
        pointer = checkpoints / "LATEST"
        if pointer.is_file() and (checkpoints / pointer.read_text().strip() / "config.json").is_file():
            return checkpoints / pointer.read_text().strip()
        raise DlforgeError(f"run folder {path} has no finished checkpoint yet: train longer or resume it")
    if not (path / "config.json").is_file():
        raise DlforgeError(f"{path} has no config.json: it is not a dlforge run, model or Hugging Face directory")
    return path


def read_config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlforgeError(f"{directory / 'config.json'} is not valid JSON ({e}): the checkpoint is damaged") from e


def load_pretrained(path: str | Path, expected_kind: str | None = None, task: str | None = None,
                    num_labels: int | None = None, labels: list[str] | None = None):
    """Load (model, tokenizer or None) from a dlforge directory, run folder or HF directory.

    For encoders (dlforge or Hugging Face), `task` (with `num_labels` or `labels`) puts a new task head on
    the checkpoint's encoder, e.g. `load_pretrained(minilm_dir, task="sequence-classification", num_labels=2)`.
    """
    from ..models import MODEL_CLASSES
    from ..text.tokenizers import load_tokenizer
    from . import bart, bert, gpt2, resnet, t5, vit

    directory = resolve_model_dir(path)
    raw = read_config(directory)
    if "dlforge_kind" in raw:
        kind = raw["dlforge_kind"]
        if kind not in MODEL_CLASSES:
            raise DlforgeError(f"{directory} holds a model of kind {kind!r}, which this dlforge version "
                               f"does not know (known: {', '.join(MODEL_CLASSES)})")
        if expected_kind and kind != expected_kind:
            raise DlforgeError(f"{directory} holds a {kind} model, but this command needs a {expected_kind} model")
        cls = MODEL_CLASSES[kind]
        try:
            config = cls.config_class.from_dict(raw["config"])
        except (TypeError, ValueError, KeyError) as e:
            raise DlforgeError(f"{directory / 'config.json'} has an invalid model config: {e}") from e
        if kind == "bert" and task is not None:  # e.g. a masked-LM run fine-tuned for classification
            saved_task = config.task
            config, new_head = bert.with_task(config, task, num_labels, labels)
            state = load_state_dict(directory)
            if config.task != saved_task:  # another task's head (an MLM transform) is no start for this one
                state = {k: v for k, v in state.items() if not k.startswith("head.")}
            model = bert.load_bert_weights(config, state, directory, new_head)
        elif kind == "vit" and task is not None:  # a new classification head on a dlforge ViT
            config, new_head = vit.with_task(config, task, num_labels, labels)
            model = vit.load_vit_weights(config, load_state_dict(directory), directory, new_head)
        else:
            model = cls(config)
            _, tied = deduplicated_state_dict(model)
            load_into(model, load_state_dict(directory), str(directory), allowed_missing=tuple(tied))
    elif raw.get("model_type") in bert.FAMILIES:
        if expected_kind and expected_kind != "bert":
            raise DlforgeError(f"{directory} holds a {raw['model_type']} model, but this command needs a "
                               f"{expected_kind} model")
        model = bert.load_hf_bert(directory, raw, task, num_labels, labels)
    elif raw.get("model_type") == "gpt2":
        if expected_kind and expected_kind != "gpt":
            raise DlforgeError(f"{directory} holds a GPT-2 model, but this command needs a {expected_kind} model")
        model = gpt2.load_hf_gpt2(directory, raw)
    elif raw.get("model_type") in ("t5", "bart"):
        if expected_kind and expected_kind != "seq2seq":
            raise DlforgeError(f"{directory} holds a {raw['model_type'].upper()} model, but this command needs a "
                               f"{expected_kind} model")
        loader = t5.load_hf_t5 if raw["model_type"] == "t5" else bart.load_hf_bart
        model = loader(directory, raw)
    elif raw.get("model_type") == "vit":
        if expected_kind and expected_kind != "vit":
            raise DlforgeError(f"{directory} holds a ViT model, but this command needs a {expected_kind} model")
        model = vit.load_hf_vit(directory, raw, task, num_labels, labels)
    elif raw.get("model_type") == "resnet":
        if expected_kind and expected_kind != "resnet":
            raise DlforgeError(f"{directory} holds a ResNet model, but this command needs a {expected_kind} model")
        model = resnet.load_hf_resnet(directory, raw, task, num_labels, labels)
    else:
        found = raw.get("model_type", "no 'model_type'")
        raise DlforgeError(f"{directory} is not a model dlforge can load ({found}); supported: dlforge models, "
                           "Hugging Face gpt2, bert, roberta, distilbert, t5, bart, vit, resnet")
    has_tokenizer = any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt"))
    tokenizer = load_tokenizer(directory) if has_tokenizer else None
    model.eval()
    return model, tokenizer
