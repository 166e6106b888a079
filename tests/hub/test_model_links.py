"""Model folders whose files are symbolic links (issue 18): a link that leads out of the folder is refused by every
reader (weights, config, tokenizer files) with one line naming the file; links inside the folder and the links of
a Hugging Face cache snapshot into its own blobs/ load as before."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlforge.errors import DlforgeError
from dlforge.models import load_pretrained, save_pretrained
from dlforge.models.bert import Bert, BertConfig
from dlforge.models.converters import save_hf_bert
from dlforge.text.tokenizers import WordPieceTokenizer

SHA = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT saved twice: as a dlforge model folder and as a Hugging Face folder (pytorch_model.bin and a
    WordPiece vocab.txt, no tokenizer.json)."""
    root = tmp_path_factory.mktemp("linked-models")
    tokenizer = WordPieceTokenizer.train(["the cat sat on the mat with a hat"] * 3, vocab_size=60)
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, n_layer=1, n_head=2,
                            intermediate_size=32, max_position=32))
    save_pretrained(model, root / "dlforge", tokenizer)
    hf = save_hf_bert(model, root / "hf", tokenizer)
    torch.save(load_file(hf / "model.safetensors"), hf / "pytorch_model.bin")
    (hf / "model.safetensors").unlink()
    vocab = sorted(tokenizer.tokenizer.get_vocab().items(), key=lambda item: item[1])
    (hf / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))
    (hf / "tokenizer.json").unlink()
    return {"dlforge": root / "dlforge", "hf": root / "hf"}


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("kind, name", [("dlforge", "model.safetensors"), ("dlforge", "config.json"),
                                        ("dlforge", "tokenizer.json"), ("dlforge", "tokenizer_config.json"),
                                        ("hf", "pytorch_model.bin"), ("hf", "vocab.txt")])
def test_a_file_linked_from_outside_the_folder_is_refused(folders, tmp_path, kind, name):
    folder, outside = tmp_path / "model", tmp_path / "outside"
    shutil.copytree(folders[kind], folder)
    outside.mkdir()
    shutil.move(folder / name, outside / name)
    (folder / name).symlink_to(outside / name)
    with pytest.raises(DlforgeError) as info:
        load_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message and f"{folder / name} is a symbolic link to a file outside" in message, message
    assert "copy the file into the folder" in message and str(outside) not in message


def test_the_command_line_refuses_it_in_one_line(folders, tmp_path, cli):
    folder = tmp_path / "model"
    shutil.copytree(folders["dlforge"], folder)
    shutil.move(folder / "model.safetensors", tmp_path / "weights.safetensors")
    (folder / "model.safetensors").symlink_to("../weights.safetensors")
    code, _, err = cli("info", folder)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "model.safetensors is a symbolic link to a file outside" in err


def test_links_within_the_folder_load(folders, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(folders["dlforge"], folder)
    (folder / "weights").mkdir()
    shutil.move(folder / "model.safetensors", folder / "weights" / "v1.safetensors")
    (folder / "model.safetensors").symlink_to("weights/v1.safetensors")
    model, tokenizer = load_pretrained(folder)
    assert same_weights(model, load_pretrained(folders["dlforge"])[0]) and tokenizer is not None


def hf_cache_entry(cache: Path, repo_id: str, source: Path) -> Path:
    """`source`'s files as a Hugging Face cache holds them: blobs/<sha256>, snapshots/<SHA>/<name> linking to
    ../../blobs/<sha256>, refs/main naming the snapshot. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    for folder in (repo / "blobs", snapshot, repo / "refs"):
        folder.mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    for file in source.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(f"../../blobs/{blob}")
    return snapshot


def test_a_hugging_face_cache_snapshot_still_loads(folders, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hf_cache_entry(cache, "org/tiny", folders["hf"])
    assert (snapshot / "pytorch_model.bin").is_symlink() and (snapshot / "config.json").is_symlink()
    reference, _ = load_pretrained(folders["hf"])
    for source in ("org/tiny", snapshot):  # by hub id (offline, from the cache) and by folder
        model, tokenizer = load_pretrained(source)
        assert same_weights(model, reference) and tokenizer.encode("the cat") == tokenizer.encode("the cat")
    # a snapshot file that links out of the cache repository's blobs is refused like any other
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(folders["hf"] / "config.json")
    with pytest.raises(DlforgeError, match=r"config.json is a symbolic link to a file outside"):
        load_pretrained("org/tiny")


def test_run_folder_files_linked_from_outside_are_refused(tmp_path):
    from dlforge.data.class_names import read_class_names
    from dlforge.metrics.anomaly import AnomalyDetector

    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (outside / "labels.json").write_text('["cat", "dog"]')
    (outside / "anomaly_detector.json").write_text("{}")
    for name in ("labels.json", "anomaly_detector.json"):
        (run / name).symlink_to(outside / name)
    with pytest.raises(DlforgeError, match="labels.json is a symbolic link to a file outside"):
        read_class_names(run)
    with pytest.raises(DlforgeError, match="anomaly_detector.json is a symbolic link to a file outside"):
        AnomalyDetector.load(run)
    (run / "labels.json").unlink()
    shutil.copy(outside / "labels.json", run / "labels.json")  # what the message asks for
    assert read_class_names(run) == ["cat", "dog"]
