"""Atomic file output, normal permissions, and cleanup after a crash.

Every file dlforge writes (checkpoints, metrics, plots, tokenizers) goes through these helpers:
the content is written to a temporary file in the same folder and then renamed over the target,
so a crash or Ctrl-C leaves either the old file or the new one, never half of one.

Temporary names carry the writer's process id (`.NAME.PID.RANDOM.tmp`, `.NAME.PID.RANDOM.old`), so two
writers never collide and `remove_stale_temporaries` can tell the debris of a dead process from the work
of a live one. Files and folders get the permissions the user's umask gives (`tempfile` would make them
private to their owner).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import DlforgeError

try:  # POSIX advisory locks; elsewhere a folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# `.NAME.PID.RANDOM.tmp` / `.old`: what the helpers below leave behind when a process dies mid-write
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:tmp|old)$")
_ANY_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)$")  # also the names of older dlforge versions (no pid)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _normal_mode(tmp_path, directory=False)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_with(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and then move the result to `target` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)


def remove_tree(path: Path) -> None:
    """Delete a folder so that a kill midway never leaves a half-deleted one under its own name: it is first
    renamed to a hidden temporary name (which `remove_stale_temporaries` clears later if the kill comes
    before the deletion ends)."""
    if not path.exists():
        return
    doomed = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".old", dir=path.parent))
    os.replace(path, doomed)  # an empty folder is replaced by a rename on POSIX
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it to `target` when the block succeeds.

    An existing `target` is replaced only after the new directory is complete: it is renamed away to a unique
    name, the new one renamed in, and the old one deleted.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _normal_mode(tmp, directory=True)
        for _ in range(100):  # another writer may put a `target` back between our two renames: go again
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".old", dir=target.parent))
                try:
                    os.replace(target, old)
                except FileNotFoundError:  # someone else moved it away first
                    pass
            try:
                os.replace(tmp, target)
            except OSError:  # the target reappeared (ENOTEMPTY / EEXIST): replace that one in the next round
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
                continue
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            break
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, locked: bool = False, recursive: bool = False) -> list[Path]:
    """Delete the temporaries that dead processes left in `folder` (and its subfolders, with `recursive`); return
    them.

    Only names of the form `atomic_path` / `atomic_directory` / `remove_tree` make are touched, and only when
    the process id in the name is not running. `locked`: the caller holds the folder's run lock, so no other
    process writes there and every temporary not of this process is stale (older, pid-less names included).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is not None:
            pid = int(match["pid"])
            if pid == os.getpid() or (not locked and _process_alive(pid)):
                continue
        elif not (locked and _ANY_TEMPORARY.match(entry.name)):
            if recursive and entry.is_dir() and not entry.is_symlink():
                removed += remove_stale_temporaries(entry, locked, recursive)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def undo_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """Remove what the block added to `folder` (and the folder, if the block made it) when the block fails, so a
    run whose setup fails (a corpus too short, a bad setting found late) leaves the folder as it was."""
    folder = Path(folder)
    before = {p.name for p in folder.iterdir()} if folder.is_dir() else None
    try:
        yield
    except BaseException:
        if folder.is_dir():
            for entry in folder.iterdir():
                if before is None or entry.name not in before:
                    remove_tree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
            if before is None and not any(folder.iterdir()):
                folder.rmdir()
        raise


_held_locks: dict[Path, int] = {}  # folder -> open descriptor of its lock file, for this process's life


def claim_folder(folder: str | os.PathLike, what: str = "run") -> bool:
    """Take an exclusive lock on an existing `folder` for the rest of this process's life; False when the folder
    does not exist yet (nothing to lock: claim it again once it is made).

    The lock is an OS lock (flock) on the folder itself, so nothing is written into it, and the kernel releases
    it when the process exits or crashes: a killed run never leaves a folder locked. Claiming a folder this
    process already holds is a no-op; one that another live process holds is a one-line error.
    """
    folder = Path(folder).resolve()
    if folder in _held_locks or fcntl is None:
        return True
    if not folder.is_dir():
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DlforgeError(f"{folder} is in use by another dlforge process (a {what} is running there): wait for "
                           "it to finish or stop it, or choose another --out") from None
    _held_locks[folder] = fd
    return True


def release_folder(folder: str | os.PathLike) -> None:
    """Give up this process's lock on `folder` (no-op when it holds none)."""
    fd = _held_locks.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


# matplotlib is optional (pip install 'dlforge[plot]'): the plotting calls ask for it here, and only they need it
PLOT_INSTALL_HINT = "pip install 'dlforge[plot]'"
_skipped_plots: set[str] = set()


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a one-line DlforgeError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise DlforgeError(f"drawing this plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def can_plot(what: str) -> bool:
    """For a plot drawn on the side of other work (a run's loss.png, a report's confusion matrix): whether
    matplotlib is there; when it is not, the work goes on and a warning says once what is not drawn and why."""
    try:
        pyplot()
    except DlforgeError:
        if what not in _skipped_plots:
            _skipped_plots.add(what)
            logging.getLogger(__name__).warning(f"{what} not drawn: matplotlib is not installed ({PLOT_INSTALL_HINT})")
        return False
    return True


def atomic_save_figure(fig, target: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it (figures are built per plot, not kept)."""
    import matplotlib.pyplot as plt

    target = Path(target)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
