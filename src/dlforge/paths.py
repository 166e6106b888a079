"""Names and paths that come from outside (model folders, data files, run folders) made safe to use.

Model and run folders are data: a class name in labels.json, a shard name in an index, the checkpoint name
in LATEST or a hub revision must never steer a read or a write outside the folder it belongs to. Two helpers
do that everywhere:

- `safe_filename(text)`: any string -> one path component (no separators, no `..`, no control characters).
- `resolve_inside(root, relative, what)`: `root / relative` when it stays inside `root`, else a one-line
  `DlforgeError` that does not say whether the outside path exists.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from .errors import DlforgeError

_UNSAFE = re.compile(r"[^\w.\- ]+")  # keep letters, digits, _, ., -, space (unicode letters included)


def safe_filename(text: str, max_length: int = 80) -> str:
    """One harmless file-name component made from arbitrary text ("/../x" -> "x", "a/b" -> "a_b").

    Separators and characters outside letters, digits, `_ . - space` become "_"; leading dots and spaces are
    dropped (no hidden files, no `..`); the result is never empty (`_`) and at most `max_length` characters.
    """
    text = unicodedata.normalize("NFC", str(text))
    text = "".join("_" if unicodedata.category(ch).startswith("C") else ch for ch in text)
    # dots, "_" and spaces all go from the front together: "/../x" is "_.._x" after the substitution
    name = _UNSAFE.sub("_", text).lstrip("._ ").rstrip("_ ")
    return name[:max_length].rstrip(" .") or "_"


def resolve_inside(root: str | os.PathLike, relative: str, what: str,
                   links_into: str | os.PathLike | None = None) -> Path:
    """`root / relative`, resolved, when it lies inside `root`; otherwise a DlforgeError naming `what`.

    Absolute paths, `..` that climbs out and links that point elsewhere are all refused; the message names
    the value as written, never whether the target outside exists. `links_into`: a second folder that the
    last component, when it is a link, may point into (a Hugging Face cache links each file of a snapshot
    folder to `../../blobs/`); the folders along the way must still lie inside `root`.
    """
    root = Path(root)
    text = str(relative).strip()
    if not text or "\x00" in text or os.path.isabs(text):
        raise DlforgeError(f"{what} {text!r} in {root} is not a path inside that folder: the folder is damaged "
                           "or was crafted; use a folder you trust")
    base = root.resolve()
    named = base / text
    target = named.resolve()
    if _within(target, base):
        return target
    if (links_into is not None and named.name not in ("", ".", "..") and _within(named.parent.resolve(), base)
            and _within(target, Path(links_into).resolve())):
        return target
    raise DlforgeError(f"{what} {text!r} in {root} points outside that folder: the folder is damaged or was "
                       "crafted; use a folder you trust")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
