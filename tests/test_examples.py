"""The documented examples run as written (briefly): examples/transfer_text.py with a few steps per stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_transfer_text_example_runs_every_stage(tmp_path, shared_data, minilm_dir, subprocess_env):
    for needed in ("sst2/train.tsv", "wnut17/wnut17train.conll", "squad/dev-v1.1.reconstructed.json"):
        if not (shared_data / needed).is_file():
            pytest.skip(f"{needed} not found in {shared_data}")
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "transfer_text.py"), "--steps", "3",
                           "--out", str(out)], env={**subprocess_env, "DLFORGE_DATA": str(shared_data)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("DAPT: held-out masked-LM loss", "SST-2 dev accuracy: full", "distilled 2-block student",
                 "WNUT-17 dev entity F1", "SQuAD held-out questions: EM"):
        assert line in done.stdout, done.stdout
    for run in ("sst2-full", "sst2-lora", "sst2-student", "wnut17", "squad"):
        assert (out / run / "model" / "model.safetensors").is_file()
        assert json.loads((out / run / "report.json").read_text())["eval_examples"] > 0


@pytest.mark.slow
def test_translate_example_trains_translates_and_draws(tmp_path, shared_data, subprocess_env):
    pytest.importorskip("sacrebleu", reason="the example scores BLEU: pip install 'dlforge[seq2seq]'")
    if not (shared_data / "multi30k" / "train.de.gz").is_file():
        pytest.skip(f"multi30k not found in {shared_data}")
    out = tmp_path / "translate"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "translate.py"), "--steps", "5",
                           "--out", str(out)], env={**subprocess_env, "DLFORGE_DATA": str(shared_data)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("trained 5 steps", "test BLEU on 100 sentences (beam 4)", "attention map:"):
        assert line in done.stdout, done.stdout
    assert (out / "attention.png").is_file() and (out / "run" / "checkpoints" / "best").is_dir()
