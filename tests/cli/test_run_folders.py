"""Run folders from the command line: what a new run may write into, what bad settings leave behind, a new
length on --resume, and the permissions of what is written."""

from __future__ import annotations

import json
import os
import stat

import pytest

TINY = ["--preset", "tiny", "--set", "block_size=16", "--set", "n_layer=1", "--set", "n_embd=32", "--seed", "7",
        "--quiet"]


@pytest.fixture
def corpus(tmp_path, synthetic_corpus):
    path = tmp_path / "corpus.txt"
    path.write_text(synthetic_corpus, encoding="utf-8")
    return path


def test_out_on_a_foreign_model_folder_is_refused_unless_overwrite(cli, corpus, tmp_path):
    model = tmp_path / "my-finetuned-model"
    model.mkdir()
    (model / "tokenizer.json").write_text('{"mine": true}')
    (model / "model.safetensors").write_bytes(b"precious")
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", model, "--max-steps", "3", *TINY)
    assert code == 2 and "is not empty and holds no dlforge run" in err and "--overwrite" in err
    assert sorted(p.name for p in model.iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert (model / "tokenizer.json").read_text() == '{"mine": true}'
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", model, "--max-steps", "3", "--overwrite", *TINY)
    assert code == 0, err
    assert (model / "checkpoints" / "LATEST").is_file() and (model / "model.safetensors").read_bytes() == b"precious"


@pytest.mark.parametrize("setting", ["lr=nan", "dropout=5", "n_embd=0", "max_minutes=nan", "n_embd=2000000"])
def test_bad_settings_write_nothing(cli, corpus, tmp_path, setting):
    out = tmp_path / "run"
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", out, "--max-steps", "3", *TINY, "--set", setting)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_run_stopped_before_its_first_checkpoint_starts_again_without_resume(cli, corpus, tmp_path):
    out = tmp_path / "run"
    code, _, _ = cli("train", "gpt", "--data", corpus, "--out", out, "--max-steps", "3", *TINY)
    assert code == 0
    # as if killed before the first checkpoint: the setup files and run.json are there, no checkpoint
    import shutil

    shutil.rmtree(out / "checkpoints")
    code, _, err = cli("train", "gpt", "--out", out, "--resume", "--quiet")
    assert code == 2 and "no checkpoint was saved there yet (start it again without --resume)" in err
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", out, "--max-steps", "3", *TINY)
    assert code == 0, err
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-0000003"


def test_resume_with_a_new_max_steps_extends_a_finished_run(cli, corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train", "gpt", "--data", corpus, "--out", out, "--max-steps", "6", "--set", "eval_interval=3",
               *TINY)[0] == 0
    code, stdout, err = cli("train", "gpt", "--out", out, "--resume", "--max-steps", "12", "--quiet")
    assert code == 0, err
    assert "step 12" in stdout
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-0000012"
    assert json.loads((out / "run.json").read_text())["train"]["max_steps"] == 12


def test_files_and_folders_follow_the_umask(cli, corpus, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert cli("train", "gpt", "--data", corpus, "--out", out, "--max-steps", "3", *TINY)[0] == 0
    finally:
        os.umask(old)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
