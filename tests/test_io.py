"""Atomic writes: normal permissions under the umask, unique temporaries, stale debris removed, safe deletion."""

import os
import subprocess
import sys
import threading

import pytest

from dlforge.io import (
    atomic_directory,
    atomic_write_text,
    current_umask,
    remove_stale_temporaries,
    remove_tree,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_get_umask_permissions(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_directory(tmp_path / "ckpt") as tmp:
        (tmp / "w").write_text("1")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755
    os.umask(0o077)
    atomic_write_text(tmp_path / "b.txt", "x")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    assert current_umask() == 0o077


def test_atomic_directory_replaces_and_leaves_no_debris(tmp_path):
    for content in ("old", "new"):
        with atomic_directory(tmp_path / "best") as tmp:
            (tmp / "w").write_text(content)
    assert (tmp_path / "best" / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_atomic_directory_failure_keeps_the_old_one(tmp_path):
    with atomic_directory(tmp_path / "best") as tmp:
        (tmp / "w").write_text("good")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "best") as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("disk full")
    assert (tmp_path / "best" / "w").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_concurrent_replacements_of_one_folder_all_succeed(tmp_path):
    errors = []

    def writer(k):
        try:
            for i in range(30):
                with atomic_directory(tmp_path / "best") as tmp:
                    (tmp / "w").write_text(f"{k}-{i}")
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / "best" / "w").read_text().endswith("-29")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".step-0000010.{dead}.abc_12.tmp").mkdir()
    (tmp_path / f".best.{dead}.q1.old").mkdir()
    (tmp_path / f".LATEST.{dead}.zz.tmp").write_text("x")
    live = tmp_path / f".best.{os.getppid()}.q2.tmp"  # a live process (our parent): left alone
    live.mkdir()
    legacy = tmp_path / ".best.old"  # an older version's name: removed only under the run lock
    legacy.mkdir()
    keep = [tmp_path / "step-0000010", tmp_path / ".hidden-user-file", tmp_path / "notes.tmp"]
    keep[0].mkdir()
    keep[1].write_text("mine")
    keep[2].write_text("mine")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 3
    assert live.exists() and legacy.exists() and all(p.exists() for p in keep)
    removed = remove_stale_temporaries(tmp_path, locked=True)
    assert set(removed) == {live, legacy}
    assert all(p.exists() for p in keep)


def test_remove_tree_never_leaves_a_half_deleted_folder_under_its_name(tmp_path, monkeypatch):
    victim = tmp_path / "step-0000010"
    victim.mkdir()
    (victim / "model.safetensors").write_text("w")
    import shutil

    def killed(path, ignore_errors=False):  # the process dies right after the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_tree(victim)
    monkeypatch.undo()
    assert not victim.exists()  # never a half-deleted step-0000010
    (debris,) = tmp_path.iterdir()
    assert debris.name.startswith(f".step-0000010.{os.getpid()}.")
    assert remove_stale_temporaries(tmp_path, locked=True) == []  # our own pid: still ours
    debris.rename(tmp_path / f".step-0000010.{_dead_pid()}.x.old")  # as if the process had died
    assert len(remove_stale_temporaries(tmp_path)) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_claimed_folder_refuses_a_second_process_and_frees_on_exit(tmp_path):
    from dlforge.errors import DlforgeError
    from dlforge.io import claim_folder, release_folder

    holder = subprocess.Popen([sys.executable, "-c", f"from dlforge.io import claim_folder; "
                               f"claim_folder({str(tmp_path)!r}); print('held', flush=True); input()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DlforgeError, match="in use by another dlforge process"):
            claim_folder(tmp_path)
    finally:
        holder.kill()  # a crash: the kernel frees the lock
        holder.wait()
    claim_folder(tmp_path)
    claim_folder(tmp_path)  # this process holds it already: no error
    release_folder(tmp_path)
