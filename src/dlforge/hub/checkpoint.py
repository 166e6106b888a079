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

import contextlib
import json
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch

from .. import __version__
from ..errors import DlforgeError
from ..io import atomic_directory, atomic_write_json
from ..paths import model_file, resolve_inside
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
        latest = pointer.read_text(encoding="utf-8", errors="replace").strip() if pointer.is_file() else ""
        # the name must stay in checkpoints/ before anything is looked up under it
        if latest and resolve_inside(checkpoints, latest, "the checkpoint named in LATEST") \
                and (checkpoints / latest / "config.json").is_file():
            return checkpoints / latest
        raise DlforgeError(f"run folder {path} has no finished checkpoint yet: train longer or resume it")
    if not (path / "config.json").is_file():
        raise DlforgeError(f"{path} has no config.json: it is not a dlforge run, model or Hugging Face directory")
    return path


def read_json_object(path: Path, damaged: str = "the checkpoint is damaged", expected: type = dict):
    """A JSON file that must hold an object (or, with `expected=list`, an array); anything else is a one-line
    DlforgeError naming the file and ending with `damaged` (what to do). Model and run folders' JSON files are
    read here: a link out of the folder is refused (`model_file`)."""
    try:
        value = json.loads(model_file(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlforgeError(f"{path} is not valid JSON ({e}): {damaged}") from e
    if not isinstance(value, expected):
        names = {dict: "an object", list: "an array", str: "a string", bool: "true or false", type(None): "null"}
        wanted = "a JSON object of settings" if expected is dict else f"a JSON {names[expected].split()[1]}"
        raise DlforgeError(f"{path} holds {names.get(type(value), 'a number')}, not {wanted}: {damaged}")
    return value


def read_config(directory: Path) -> dict:
    return read_json_object(directory / "config.json")


@contextlib.contextmanager
def config_errors(path: Path):
    """Turns what a missing or mistyped config.json field raises deep in a config class or a converter (KeyError,
    TypeError, ...) into one line that names the file; dlforge's own errors pass through as they are."""
    try:
        yield
    except DlforgeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        if isinstance(e, KeyError) and e.args:
            reason = f"no {e.args[0]!r}"
        else:
            reason = next(iter(str(e).strip().splitlines()), type(e).__name__)
        raise DlforgeError(f"{path} has an invalid model config ({reason}): the file is damaged or was edited; "
                           "re-download the model or re-save it") from e


def _fits(value, hint) -> bool:
    """Whether a config value has its field's declared type (int, float, bool, str, lists, `X | None`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if hint in (int, float):  # bool is an int to Python, never a size or a rate in a config
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True  # others: the config's own checks


def check_field_types(config_class: type, values: dict, path: Path) -> None:
    """A one-line DlforgeError for the first of `values` that does not have its config field's declared type."""
    hints = typing.get_type_hints(config_class)
    for field in fields(config_class):
        if field.name in values and not _fits(values[field.name], hints[field.name]):
            shown = repr(values[field.name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            hint = hints[field.name]
            wanted = hint.__name__ if isinstance(hint, type) else str(hint)  # "int", "list[int]", "str | None"
            raise DlforgeError(f"{path} has an invalid model config: {field.name}={shown} is not of type {wanted}; "
                               "the file is damaged or was edited: re-download the model or re-save it")


def _check_hf_config(directory: Path, raw: dict) -> None:
    """Convert a Hugging Face config.json once before its loader does, so that a missing or mistyped field is
    one line naming the file rather than a KeyError or TypeError from inside the loader."""
    from ..models import ResNetConfig
    from . import bart, bert, gpt2, resnet, t5, vit

    converters = {"gpt2": gpt2.config_from_hf, "t5": t5.config_from_hf, "bart": bart.config_from_hf,
                  "vit": vit.config_from_hf, "resnet": lambda hf: ResNetConfig(**resnet.config_from_hf(hf)),
                  **dict.fromkeys(bert.FAMILIES, bert.config_from_hf)}
    family = raw.get("model_type")
    if not isinstance(family, str) or family not in converters:
        return  # not a model dlforge can load: load_pretrained says so
    path = directory / "config.json"
    with config_errors(path):
        config = converters[family](raw)
    if is_dataclass(config):
        check_field_types(type(config), {f.name: getattr(config, f.name) for f in fields(config)}, path)


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
    if "dlforge_kind" not in raw:
        _check_hf_config(directory, raw)
    if "dlforge_kind" in raw:
        kind = raw["dlforge_kind"]
        if not isinstance(kind, str) or kind not in MODEL_CLASSES:
            raise DlforgeError(f"{directory} holds a model of kind {kind!r}, which this dlforge version "
                               f"does not know (known: {', '.join(MODEL_CLASSES)})")
        if expected_kind and kind != expected_kind:
            raise DlforgeError(f"{directory} holds a {kind} model, but this command needs a {expected_kind} model")
        cls = MODEL_CLASSES[kind]
        settings = raw.get("config")
        if not isinstance(settings, dict):
            raise DlforgeError(f"{directory / 'config.json'} has an invalid model config: 'config' must be an "
                               "object of settings; the file is damaged or was edited: re-save the model")
        check_field_types(cls.config_class, settings, directory / "config.json")
        try:
            config = cls.config_class.from_dict(settings)
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
