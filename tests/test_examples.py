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
