"""dlforge.paths: names from data become one harmless file-name component; paths from model folders stay inside."""

from __future__ import annotations

import os

import pytest

from dlforge.errors import DlforgeError
from dlforge.paths import resolve_inside, safe_filename


@pytest.mark.parametrize("text, expected", [
    ("/../../../../x", "x"),
    ("a/b", "a_b"),
    ("..", "_"),
    (".hidden", "hidden"),
    ("tab\there\nnew\x00line\x1b[31m", "tab_here_new_line__31m"),
    ("", "_"),
    ("seven", "seven"),
    ("Ziffer 7-ä.b", "Ziffer 7-ä.b"),
])
def test_safe_filename(text, expected):
    assert safe_filename(text) == expected


@pytest.mark.parametrize("text", ["/../../../../x", "a/b", "..", ".hidden", "\x00\x01\x7f", "", "a\\..\\b",
                                  "x" * 500, " . ", "con:../y"])
def test_safe_filename_is_always_one_plain_component(text, tmp_path):
    name = safe_filename(text)
    assert name and name not in (".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name and len(name) <= 80
    assert all(ch.isprintable() for ch in name)
    assert (tmp_path / name).parent == tmp_path


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "w.safetensors").write_bytes(b"inside")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_resolve_inside_a_nested_path(root):
    assert resolve_inside(root, "sub/w.safetensors", "shard") == (root / "sub" / "w.safetensors").resolve()
    assert resolve_inside(root, "sub/../sub/w.safetensors", "shard") == (root / "sub" / "w.safetensors").resolve()


@pytest.mark.parametrize("relative, fragment", [
    ("/etc/passwd", "is not a path inside that folder"),
    ("", "is not a path inside that folder"),
    ("../secret.txt", "points outside that folder"),
    ("sub/../../secret.txt", "points outside that folder"),
])
def test_resolve_inside_refuses_paths_that_leave(root, relative, fragment):
    with pytest.raises(DlforgeError, match=fragment) as info:
        resolve_inside(root, relative, "shard")
    assert "\n" not in str(info.value) and "shard" in str(info.value)


def test_resolve_inside_refuses_a_link_that_points_outside(root, tmp_path):
    os.symlink(tmp_path / "secret.txt", root / "link.safetensors")
    os.symlink(tmp_path, root / "up")
    for relative in ("link.safetensors", "up/secret.txt"):
        with pytest.raises(DlforgeError, match="points outside that folder"):
            resolve_inside(root, relative, "shard")


def test_message_does_not_tell_whether_the_outside_path_exists(root):
    messages = []
    for relative in ("../secret.txt", "../no-such-file.txt"):
        with pytest.raises(DlforgeError) as info:
            resolve_inside(root, relative, "shard")
        messages.append(str(info.value).replace(relative, "<name>"))
    assert messages[0] == messages[1]


def test_links_into_allows_the_last_link_only(tmp_path):
    """The layout of a Hugging Face cache: snapshots/<sha>/<file> -> ../../blobs/<hash>."""
    repo = tmp_path / "models--org--name"
    snapshot, blobs = repo / "snapshots" / "abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "1234").write_bytes(b"tensors")
    os.symlink("../../blobs/1234", snapshot / "model-00001-of-00002.safetensors")
    with pytest.raises(DlforgeError, match="points outside"):  # without links_into: a link out is refused
        resolve_inside(snapshot, "model-00001-of-00002.safetensors", "shard")
    found = resolve_inside(snapshot, "model-00001-of-00002.safetensors", "shard", links_into=blobs)
    assert found == (blobs / "1234").resolve()
    # the name itself must still stay in the snapshot: climbing into blobs directly, or a link elsewhere, is refused
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", snapshot / "other.safetensors")
    for relative in ("../../blobs/1234", "other.safetensors", ".."):
        with pytest.raises(DlforgeError, match="points outside"):
            resolve_inside(snapshot, relative, "shard", links_into=blobs)
