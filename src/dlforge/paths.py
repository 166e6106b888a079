"""Names and paths that come from outside (model folders, data files, run folders) made safe to use.

Model and run folders are data: a class name in labels.json, a shard name in an index, the checkpoint name
in LATEST or a hub revision must never steer a read or a write outside the folder it belongs to. Two helpers
do that everywhere:

- `safe_filename(text)`: any string -> one path component (no separators, no `..`, no control characters).
- `resolve_inside(root, relative, what)`: `root / relative` when it stays inside `root`, else a one-line
  `DlforgeError` that does not say whether the outside path exists.

A file of the folder may itself be a symbolic link: `model_file(path)` is what every reader of a model or run
folder's files (config, weights, tokenizer, preprocessor and run settings) passes the path through, so a link that
leads out of the folder is refused. A Hugging Face cache is made of such links (each file of
`models--org--name/snapshots/<revision>/` links to `../../blobs/<hash>`): a link into the blobs of the cache
repository that the folder is a snapshot of is what the cache holds, and is followed (`hf_cache_blobs`).
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


def hf_cache_blobs(folder: str | os.PathLike) -> Path | None:
    """The `blobs/` folder of the Hugging Face cache repository when `folder` is one of its snapshots
    (`<repo>/snapshots/<revision>/`) or a folder inside one (a sentence-transformers `1_Pooling/`); else None.
    A `blobs` that is itself a link is not a cache's: None."""
    resolved = Path(folder).resolve()
    for ancestor in resolved.parents:
        if ancestor.name == "snapshots":
            blobs = ancestor.parent / "blobs"
            return blobs if blobs.is_dir() and not blobs.is_symlink() else None
    return None


def model_file(path: str | os.PathLike) -> Path:
    """`path`, a file that dlforge is about to read from a model or run folder, once it is known not to be a
    symbolic link that leads out of the folder it lies in (into the blobs of a Hugging Face cache snapshot is
    allowed: `hf_cache_blobs`). A missing file passes (the caller says what is missing). Otherwise a one-line
    DlforgeError naming the file and saying what to do; it does not say where the link points."""
    path = Path(path)
    folder, target = path.parent.resolve(), path.resolve()
    if _within(target, folder):
        return path
    blobs = hf_cache_blobs(folder)
    if blobs is not None and _within(target, blobs.resolve()):
        return path
    raise DlforgeError(f"{path} is a symbolic link to a file outside {path.parent}: dlforge reads a model's files "
                       "only from inside its folder; copy the file into the folder in place of the link "
                       "(e.g. cp --remove-destination \"$(readlink -f FILE)\" FILE)")
