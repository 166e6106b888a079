"""The documented examples run as written (briefly): examples/transfer_text.py with a few steps per stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_example(script: str, out: Path, steps: int, shared_data: Path, env: dict, *flags: str) -> str:
    """Run examples/<script> --steps N --out OUT [flags] on the shared data; return its stdout (fails on a non-zero
    exit)."""
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / script), "--steps", str(steps),
                           "--out", str(out), *flags], env={**env, "DLFORGE_DATA": str(shared_data)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_transfer_text_example_runs_every_stage(tmp_path, shared_data, minilm_dir, subprocess_env):
    for needed in ("sst2/train.tsv", "wnut17/wnut17train.conll", "squad/dev-v1.1.reconstructed.json"):
        if not (shared_data / needed).is_file():
            pytest.skip(f"{needed} not found in {shared_data}")
    out = tmp_path / "runs"
    stdout = run_example("transfer_text.py", out, 3, shared_data, subprocess_env)
    for line in ("DAPT: held-out masked-LM loss", "SST-2 dev accuracy: full", "distilled 2-block student",
                 "WNUT-17 dev entity F1", "SQuAD held-out questions: EM"):
        assert line in stdout, stdout
    for run in ("sst2-full", "sst2-lora", "sst2-student", "wnut17", "squad"):
        assert (out / run / "model" / "model.safetensors").is_file()
        assert json.loads((out / run / "report.json").read_text())["eval_examples"] > 0


@pytest.mark.slow
def test_translate_example_trains_translates_and_draws(tmp_path, shared_data, subprocess_env):
    pytest.importorskip("sacrebleu", reason="the example scores BLEU: pip install 'dlforge[seq2seq]'")
    if not (shared_data / "multi30k" / "train.de.gz").is_file():
        pytest.skip(f"multi30k not found in {shared_data}")
    out = tmp_path / "translate"
    stdout = run_example("translate.py", out, 5, shared_data, subprocess_env)
    for line in ("trained 5 steps", "test BLEU on 100 sentences (beam 4)", "attention map:"):
        assert line in stdout, stdout
    assert (out / "attention.png").is_file() and (out / "run" / "checkpoints" / "best").is_dir()


@pytest.mark.slow
def test_generate_images_example_writes_every_picture(tmp_path, shared_data, subprocess_env):
    if not (shared_data / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"mnist not found in {shared_data}")
    out = tmp_path / "images"
    assert "samples:" in run_example("generate_images.py", out, 3, shared_data, subprocess_env)
    for name in ("digits", "dpm", "img2img", "inpaint", "outpaint", "strip", "vae", "interpolation"):
        assert (out / f"{name}.png").is_file(), name
    assert (out / "diffusion" / "checkpoints" / "best").is_dir() and (out / "vae" / "samples.png").is_file()


@pytest.mark.slow
def test_vision_transfer_example_runs_every_stage(tmp_path, shared_data, subprocess_env):
    if not (shared_data / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"mnist not found in {shared_data}")
    out = tmp_path / "vision"
    stdout = run_example("vision_transfer.py", out, 5, shared_data, subprocess_env, "--vit")
    for line in ("10 labels per class, features: test accuracy", "10 labels per class, full: test accuracy",
                 "ViT taught by the ResNet, full: test accuracy", "5.png: ", "DANN: MNIST accuracy"):
        assert line in stdout, stdout
    assert (out / "lr" / "lr_find.png").is_file() and (out / "few-full" / "confusion_matrix.png").is_file()
    assert (out / "dann" / "model" / "model.safetensors").is_file()
