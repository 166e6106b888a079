"""dlforge.paths: names from data become one harmless file-name component; paths from model folders stay inside."""

from __future__ import annotations

import os

import pytest

from dlforge.errors import DlforgeError
from dlforge.paths import hf_cache_blobs, model_file, resolve_inside, safe_filename


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


def test_model_file_refuses_a_link_out_of_its_folder(root, tmp_path):
    (root / "model.safetensors").symlink_to(tmp_path / "secret.txt")
    (root / "config.json").symlink_to("../secret.txt")  # relative links too
    (root / "dangling.json").symlink_to(tmp_path / "no-such-file.json")
    for name in ("model.safetensors", "config.json", "dangling.json"):
        with pytest.raises(DlforgeError, match="is a symbolic link to a file outside") as info:
            model_file(root / name)
        message = str(info.value)
        assert "\n" not in message and str(root / name) in message and "copy the file into the folder" in message
        assert "secret" not in message and "no-such-file" not in message  # where it points is not told


def test_model_file_follows_links_within_the_folder(root, tmp_path):
    (root / "model.safetensors").symlink_to("sub/w.safetensors")
    (root / "sub" / "again.safetensors").symlink_to("../sub/w.safetensors")
    assert model_file(root / "model.safetensors").read_bytes() == b"inside"
    assert model_file(root / "sub" / "again.safetensors").read_bytes() == b"inside"
    assert model_file(root / "missing.json") == root / "missing.json"  # the caller reports a missing file
    linked_folder = tmp_path / "elsewhere"  # the folder itself may be a link: its files are judged where it lies
    linked_folder.symlink_to(root)
    assert model_file(linked_folder / "sub" / "w.safetensors").read_bytes() == b"inside"


def test_model_file_in_a_hugging_face_cache_follows_links_into_its_own_blobs(tmp_path):
    """snapshots/<sha>/<file> -> ../../blobs/<hash> (and 1_Pooling/config.json -> ../../../blobs/<hash>) are the
    cache; a link to another repository's blobs or out of the cache is not."""
    repo, other = tmp_path / "hub" / "models--org--name", tmp_path / "hub" / "models--org--other"
    snapshot = repo / "snapshots" / "abc"
    (snapshot / "1_Pooling").mkdir(parents=True)
    for folder in (repo / "blobs", other / "blobs"):
        folder.mkdir(parents=True)
        (folder / "1234").write_bytes(b"tensors")
    (tmp_path / "secret.txt").write_text("outside")
    (snapshot / "model.safetensors").symlink_to("../../blobs/1234")
    (snapshot / "1_Pooling" / "config.json").symlink_to("../../../blobs/1234")
    (snapshot / "config.json").symlink_to("../../../models--org--other/blobs/1234")
    (snapshot / "tokenizer.json").symlink_to(tmp_path / "secret.txt")
    assert hf_cache_blobs(snapshot) == hf_cache_blobs(snapshot / "1_Pooling") == repo / "blobs"
    assert model_file(snapshot / "model.safetensors").read_bytes() == b"tensors"
    assert model_file(snapshot / "1_Pooling" / "config.json").read_bytes() == b"tensors"
    for name in ("config.json", "tokenizer.json"):
        with pytest.raises(DlforgeError, match="is a symbolic link to a file outside"):
            model_file(snapshot / name)


def test_a_blobs_folder_that_is_a_link_makes_no_cache(tmp_path):
    repo = tmp_path / "models--org--name"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs").symlink_to(tmp_path)  # would let every file under tmp_path pass as a blob
    (tmp_path / "secret.txt").write_text("outside")
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to("../../blobs/secret.txt")
    assert hf_cache_blobs(repo / "snapshots" / "abc") is None
    with pytest.raises(DlforgeError, match="is a symbolic link to a file outside"):
        model_file(repo / "snapshots" / "abc" / "model.safetensors")
