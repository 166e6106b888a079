"""The class names of an image run, saved beside its weights as labels.json.

The Trainer saves a `ClassNames` as it saves a tokenizer, so that `dlforge sample --label 7`, the image-generation
pipeline and classifier outputs can use names; `read_class_names` reads them back from a model or run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DlforgeError
from ..io import atomic_write_json
from ..paths import model_file

LABELS_FILE = "labels.json"


class ClassNames:
    """The class names of a run, saved beside the weights as labels.json (the Trainer saves it like a
    tokenizer), so `dlforge sample --label 7` and classifier outputs can use names."""

    def __init__(self, names: list[str] | None):
        self.names = names

    def save(self, directory: str | Path) -> None:
        if self.names is not None:
            atomic_write_json(Path(directory) / LABELS_FILE, self.names)


def read_class_names(model_dir: str | Path) -> list[str] | None:
    """The names in a run's labels.json (None without one). They are data from the run folder: whoever makes
    a file name of one passes it through `dlforge.paths.safe_filename`."""
    path = model_file(Path(model_dir) / LABELS_FILE)  # not a link out of the folder
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlforgeError(f"{path} is not valid JSON ({e}): the run is damaged; restore it or train again") from e
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DlforgeError(f"{path} must hold a list of class names (strings): the run is damaged or was edited; "
                           "restore it or train again")
    return names
