"""Kill `dlforge train gpt` with SIGKILL mid-run, resume it, and compare with an uninterrupted run.

The Trainer promises that on CPU a resumed run ends with weights bit-identical to a run that was
never interrupted (batches are a function of the step; the checkpoint holds optimizer, RNG and
schedule state), and that `checkpoints/LATEST` only ever names a complete checkpoint.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

MAX_STEPS = 100  # ~5 s of training; the kill comes at step >= 20, i.e. ~1 s in
KILL_AT = 20
TIMEOUT = 240


def train_cmd(dlforge_cmd, data: Path, out: Path, *extra: str) -> list[str]:
    return dlforge_cmd("train", "gpt", "--data", str(data), "--out", str(out), "--preset", "tiny",
                       "--set", "eval_interval=10", "--set", "dropout=0.1", "--max-steps", str(MAX_STEPS),
                       "--seed", "3", "--quiet", *extra)


def latest_name(run: Path) -> str | None:
    try:
        return (run / "checkpoints" / "LATEST").read_text().strip() or None
    except FileNotFoundError:
        return None


def step_of(name: str) -> int:
    assert name.startswith("step-"), name
    return int(name.removeprefix("step-"))


def read_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    name = latest_name(run)
    assert name == f"step-{MAX_STEPS:07d}", name
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 5
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"tensors differ after resume: {differing}"


def test_sigkill_then_resume_is_bit_identical(tmp_path, synthetic_text_file, dlforge_cmd, subprocess_env):
    cut, full = tmp_path / "cut", tmp_path / "full"
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("cut", "full")}
    # the uninterrupted reference runs alongside (one thread each, so the two share the cores)
    reference = subprocess.Popen(train_cmd(dlforge_cmd, synthetic_text_file, full), env=subprocess_env,
                                 stdout=logs["full"], stderr=subprocess.STDOUT)
    victim = subprocess.Popen(train_cmd(dlforge_cmd, synthetic_text_file, cut), env=subprocess_env,
                              stdout=logs["cut"], stderr=subprocess.STDOUT)
    incomplete_pointers, seen = [], []
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if victim.poll() is not None:
                pytest.fail(f"the run ended (rc {victim.returncode}) before it could be killed at step "
                            f">= {KILL_AT}: raise MAX_STEPS. Output:\n{(tmp_path / 'cut.log').read_text()}")
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            name = latest_name(cut)
            if name is not None and (not seen or seen[-1] != name):
                seen.append(name)
                if not (cut / "checkpoints" / name / "trainer_state.pt").is_file() and latest_name(cut) == name:
                    incomplete_pointers.append(name)
                if step_of(name) >= KILL_AT:
                    os.kill(victim.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()

    assert not incomplete_pointers, f"LATEST named incomplete checkpoints while training: {incomplete_pointers}"
    killed_at_name = latest_name(cut)
    killed_at = step_of(killed_at_name)
    assert KILL_AT <= killed_at < MAX_STEPS
    assert all(step_of(n) % 10 == 0 for n in seen), seen
    # after the kill, LATEST names a complete, non-temporary checkpoint
    assert not killed_at_name.endswith(".tmp")
    pointed = cut / "checkpoints" / killed_at_name
    assert pointed.is_dir()
    assert {"trainer_state.pt", "model.safetensors", "config.json", "tokenizer.json"} <= \
        {p.name for p in pointed.iterdir()}
    for leftover in (cut / "checkpoints").glob("*.tmp"):
        assert leftover.name.startswith("."), f"temporary checkpoint not hidden: {leftover}"

    resumed = subprocess.run(train_cmd(dlforge_cmd, synthetic_text_file, cut, "--resume"), env=subprocess_env,
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert f"reached max_steps={MAX_STEPS}" in resumed.stdout
    assert "Traceback" not in resumed.stderr
    assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "full.log").read_text()
    for f in logs.values():
        f.close()

    # bit-identical final weights (and best model) to the uninterrupted run
    assert_bit_identical(final_weights(cut), final_weights(full))
    assert_bit_identical(load_file(str(cut / "checkpoints" / "best" / "model.safetensors")),
                         load_file(str(full / "checkpoints" / "best" / "model.safetensors")))
    state_cut = torch.load(pointed.parent / f"step-{MAX_STEPS:07d}" / "trainer_state.pt", weights_only=True)
    state_full = torch.load(full / "checkpoints" / f"step-{MAX_STEPS:07d}" / "trainer_state.pt",
                            weights_only=True)
    assert state_cut["best_val"] == state_full["best_val"]
    assert torch.equal(state_cut["rng_cpu"], state_full["rng_cpu"])

    # metrics.csv: no step logged twice, and every row equals the uninterrupted run's
    rows, ref_rows = read_rows(cut), read_rows(full)
    for column in ("train_loss", "val_loss"):
        steps = [int(r["step"]) for r in rows if r[column]]
        duplicates = [s for s, n in Counter(steps).items() if n > 1]
        assert not duplicates, f"{column} logged twice for steps {duplicates}"
        assert steps == sorted(steps)
        assert set(range(killed_at + 10, MAX_STEPS + 1, 10)) <= set(steps), steps
    key = lambda r: (r["step"], bool(r["train_loss"]))
    reference_rows = {key(r): r for r in ref_rows}
    for r in rows:
        expected = reference_rows[key(r)]
        assert (r["train_loss"], r["val_loss"], r["lr"]) == \
            (expected["train_loss"], expected["val_loss"], expected["lr"]), r["step"]
    assert (cut / "loss.png").is_file()
