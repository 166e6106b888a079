"""Loading and saving models as their users know them: `load_pretrained(path)` -> (model, tokenizer),
`save_pretrained(model, directory)`, and `PretrainedModel`, the base of every model family, which gives
`GPT.from_pretrained(dir_or_hub_id, **overrides)` and `model.save_pretrained(directory, format="hf")` through
the same code.

A dlforge model directory holds:
  config.json        {"dlforge_kind": "gpt", "dlforge_version": ..., "config": {...dataclass fields}}
  model.safetensors  the weights (a tensor shared by two names, e.g. tied embeddings, stored once)
  tokenizer files    whatever the tokenizer saves (tokenizer.json, tokenizer_config.json)

`load_pretrained(path)` accepts such a directory, a training run folder (it picks the best, else the latest
checkpoint), a Hugging Face checkpoint directory or Hub id of a supported architecture, or a weight file of a
supported kind (torchvision/timm ResNet). What a path holds is decided by one registry of formats (`FORMATS`):
each says how it is recognised, which dlforge kind it loads as, its converter and, where there is one, its
Hugging Face exporter. `dlforge.models.formats` fills it when `dlforge.models` is imported: the converters build
the model classes, which themselves derive from `PretrainedModel`, so the table is written after them.
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path

import torch

from ..errors import DlforgeError
from ..hub.download import hub_snapshot, looks_local, parse_hub_id
from ..hub.json_files import read_json_object
from ..hub.model_files import write_model_files
from ..hub.weights import load_into
from ..io import atomic_directory
from ..paths import resolve_inside
from ..text import load_tokenizer

SAVE_FORMATS = ("dlforge", "hf")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


@dataclass(frozen=True)
class Head:
    """The task head asked of a loader: all None keeps the checkpoint's own head."""

    task: str | None = None
    num_labels: int | None = None
    labels: list[str] | None = None

    def asked(self) -> bool:
        return self.task is not None or self.num_labels is not None or self.labels is not None


@dataclass(frozen=True)
class Format:
    """One kind of checkpoint `load_pretrained` reads."""

    name: str  # in the list of supported formats: "gpt2", "dlforge model folders"
    title: str  # in errors ("holds a GPT-2 model"); empty: the kind itself
    kind: str | Callable[[Path, dict], str]  # the dlforge kind it loads as; a callable reads it from config.json
    matches: Callable[[Path, dict | None], bool]  # (a folder and its config.json, or a file and None)
    load: Callable[[Path, dict | None, Head], torch.nn.Module]  # (the same, the head asked for) -> model
    check_config: Callable[[dict], object] | None = None  # builds the config first: a bad field is one line
    export: Callable[[torch.nn.Module, Path, object], Path] | None = None  # (model, folder, tokenizer)
    heads: bool = False  # whether the loader puts on the head asked for (task, num_labels, labels)

    def kind_in(self, source: Path, config: dict | None) -> str:
        return self.kind(source, config) if callable(self.kind) else self.kind


FORMATS: list[Format] = []  # filled by dlforge.models.formats


def register_formats(formats: list[Format]) -> None:
    """Make `formats` the registry `load_pretrained` and `save_pretrained(format="hf")` dispatch through."""
    FORMATS[:] = formats


# ------------------------------------------------------------------ saving
def save_pretrained(model: torch.nn.Module, directory: str | Path, tokenizer=None, format: str = "dlforge") -> Path:
    """Save a model (and tokenizer) as a folder, replacing it atomically: dlforge's own format, or with
    `format="hf"` the Hugging Face one (transformers loads it) for the families that have an exporter."""
    directory = Path(directory)
    if format not in SAVE_FORMATS:
        raise DlforgeError(f"unknown save format {format!r}: choose one of {', '.join(SAVE_FORMATS)}")
    if format == "hf":
        exporter = next((f.export for f in FORMATS if f.export and f.kind == model.kind), None)
        if exporter is None:
            have = sorted({f.kind for f in FORMATS if f.export})
            raise DlforgeError(f"{type(model).__name__} models have no Hugging Face format: format='hf' saves "
                               f"{', '.join(have)} models; save this one with format='dlforge'")
        return exporter(model, directory, tokenizer)
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer)
    return directory


# ------------------------------------------------------------------ finding the checkpoint
def _existing_path(path: str | Path) -> Path:
    """`path` itself when it exists; for a string that does not, the Hub snapshot of the id it reads like. A path
    meant as a local one (see `looks_local`) is never looked up on the Hub."""
    local = not isinstance(path, str) or looks_local(path)
    if not local and not Path(path).exists() and parse_hub_id(path) is not None:
        return hub_snapshot(path)
    found = Path(path).expanduser()
    if not found.exists():
        hint = "check the path" if local else "give a dlforge run folder, a model directory or a Hugging Face Hub " \
                                              "id (org/name)"
        raise DlforgeError(f"no such folder: {path} does not exist; {hint}")  # as typed: ./x, ~/x
    return found


def _checkpoint_in(path: Path) -> Path:
    """A model folder itself, or the best (else the latest) checkpoint of a training run folder."""
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


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory itself, the best/latest checkpoint inside a training run folder, or (for a string
    that is no existing path but reads like `org/name[@revision]`) the Hugging Face Hub snapshot of that id."""
    path = _existing_path(path)
    if not path.is_dir():
        raise DlforgeError(f"{path} is a file: give the directory that holds config.json and the weights")
    return _checkpoint_in(path)


# ------------------------------------------------------------------ checking configs
@contextlib.contextmanager
def config_errors(path: Path):
    """Turns what a missing or mistyped config.json field raises deep in a config class or a converter (KeyError,
    TypeError, ...) into one line that names the file; dlforge errors that already name the checkpoint pass
    through as they are."""
    try:
        yield
    except DlforgeError as e:
        if str(path.parent) in str(e):  # it already names the checkpoint
            raise
        # a config value the model itself refuses (an unknown activation): say which file holds it
        raise DlforgeError(f"{path} has an invalid model config ({e}): the file is damaged or was edited; "
                           "re-download the model or re-save it") from e
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


def mistyped_field(config_class: type, values: dict) -> str | None:
    """"name=value is not of type T" for the first of `values` without its config field's declared type."""
    hints = typing.get_type_hints(config_class)
    for field in fields(config_class):
        if field.name in values and not _fits(values[field.name], hints[field.name]):
            shown = repr(values[field.name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            hint = hints[field.name]
            wanted = hint.__name__ if isinstance(hint, type) else str(hint)  # "int", "list[int]", "str | None"
            return f"{field.name}={shown} is not of type {wanted}"
    return None


def check_field_types(config_class: type, values: dict, path: Path) -> None:
    """A one-line DlforgeError for the first of `values` that does not have its config field's declared type."""
    problem = mistyped_field(config_class, values)
    if problem:
        raise DlforgeError(f"{path} has an invalid model config: {problem}; the file is damaged or was edited: "
                           "re-download the model or re-save it")


def with_overrides(model: torch.nn.Module, overrides: dict, source: Path) -> torch.nn.Module:
    """The model rebuilt with some config fields changed (e.g. dropout=0.2) and its loaded weights copied in."""
    valid = [f.name for f in fields(model.config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise DlforgeError(f"unknown {type(model).__name__} config field(s) {', '.join(unknown)}: valid ones are "
                           f"{', '.join(valid)}")
    problem = mistyped_field(type(model.config), overrides)
    if problem:
        raise DlforgeError(f"cannot override {problem}")
    try:
        config = replace(model.config, **overrides)
    except (TypeError, ValueError) as e:
        raise DlforgeError(f"cannot override {', '.join(overrides)}: {e}") from e
    rebuilt = type(model)(config)
    load_into(rebuilt, model.state_dict(), f"{source} (with {', '.join(overrides)} overridden)")
    return rebuilt


# ------------------------------------------------------------------ loading
def fixed_head_error(source: Path, what: str) -> DlforgeError:
    """The error for a task / num_labels / labels asked of a model whose head is fixed (GPT, T5, a GAN...)."""
    return DlforgeError(f"{source} holds a {what} model, whose head cannot be chosen: leave out task, num_labels "
                        "and labels")


def _format_of(source: Path, config: dict | None) -> Format:
    fmt = next((f for f in FORMATS if f.matches(source, config)), None)
    if fmt is not None:
        return fmt
    supported = ", ".join(f.name for f in FORMATS)
    if config is None:
        raise DlforgeError(f"{source} is a file: give the directory that holds config.json and the weights "
                           f"(supported: {supported})")
    found = config.get("model_type", "no 'model_type'")
    raise DlforgeError(f"{source} is not a model dlforge can load ({found}); supported: {supported}")


def load_model(path: str | Path, expected_kind: str | None = None, needed_by: str = "this command",
               head: Head = Head(), overrides: dict | None = None):
    """`load_pretrained`, with the head as one value and `needed_by` (who asked for `expected_kind`) for errors."""
    source = _existing_path(path)
    if source.is_dir():
        source = _checkpoint_in(source)
    config = read_json_object(source / "config.json") if source.is_dir() else None
    fmt = _format_of(source, config)
    described_by = source / "config.json" if config is not None else source  # what a conversion error blames
    if fmt.check_config is not None:
        with config_errors(described_by):
            built = fmt.check_config(config)
        if is_dataclass(built):
            check_field_types(type(built), {f.name: getattr(built, f.name) for f in fields(built)}, described_by)
    kind = fmt.kind_in(source, config)
    if expected_kind and kind != expected_kind:
        raise DlforgeError(f"{source} holds a {fmt.title or kind} model, but {needed_by} needs a {expected_kind} "
                           "model")
    if head.asked() and not fmt.heads:
        raise fixed_head_error(source, fmt.title or kind)
    with config_errors(described_by):  # a field only the converter reads (id2label, architectures, ...)
        model = fmt.load(source, config, head)
    if overrides:
        model = with_overrides(model, overrides, source)
    has_tokenizer = source.is_dir() and any((source / f).is_file() for f in TOKENIZER_FILES)
    tokenizer = load_tokenizer(source) if has_tokenizer else None
    model.eval()
    return model, tokenizer


def load_pretrained(path: str | Path, expected_kind: str | None = None, task: str | None = None,
                    num_labels: int | None = None, labels: list[str] | None = None, **overrides):
    """(model, tokenizer or None) from a dlforge directory, run folder, Hugging Face directory or Hub id, or a
    weight file; the model is in eval mode.

    For encoders and image models (dlforge or Hugging Face), `task` (with `num_labels` or `labels`) puts a new
    task head on the checkpoint's body, e.g. `load_pretrained(minilm_dir, task="sequence-classification",
    num_labels=2)`. `overrides` change config fields that leave the weights as they are (e.g. dropout=0.1).
    """
    return load_model(path, expected_kind, head=Head(task, num_labels, labels), overrides=overrides)


class PretrainedModel(torch.nn.Module):
    """Base of every model family: `Cls.from_pretrained(...)` and `model.save_pretrained(...)`."""

    kind: str  # the name stored in config.json ("gpt"); each family sets it
    config_class: type  # the family's dataclass config

    @classmethod
    def from_pretrained(cls, path: str | Path, *, task: str | None = None, num_labels: int | None = None,
                        labels: list[str] | None = None, **overrides):
        """The model (eval mode) of a dlforge folder or run, a Hugging Face folder or Hub id, or a weight file of
        this family; task / num_labels / labels choose a new head where the family has them, `overrides` change
        config fields (e.g. dropout=0.1). A checkpoint of another family is a one-line DlforgeError."""
        model, _ = load_model(path, cls.kind, f"{cls.__name__}.from_pretrained", Head(task, num_labels, labels),
                              overrides)
        return model

    def save_pretrained(self, directory: str | Path, tokenizer=None, format: str = "dlforge") -> Path:
        """Save as a folder `from_pretrained` (format="dlforge") or transformers (format="hf") loads."""
        return save_pretrained(self, directory, tokenizer, format)
