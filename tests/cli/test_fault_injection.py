"""Fault injection on real `dlforge` processes: kill -9 at random moments, a full disk, a read-only folder, two
runs in one folder and a NaN at a chosen step.

After each fault the last good checkpoint loads, `--resume` finishes the run (bit-identical to a run that was
never interrupted, where the run has a fixed length), and no temporary debris is left once the next start ran.
The kill moments come from a seeded generator, so a failure can be replayed.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune_cli import make_review_data

from dlforge.cli.main import main
from dlforge.models import load_pretrained

GPT_RUN = ["--preset", "tiny", "--set", "block_size=16", "--set", "n_layer=1", "--set", "n_embd=32",
           "--set", "eval_interval=3", "--set", "keep_last=1", "--set", "log_interval=3", "--max-steps", "150",
           "--seed", "7", "--quiet"]


def _debris(folder: Path) -> list[str]:
    """Temporaries of atomic writes and deletions anywhere in the run folder."""
    return [str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def _latest(run: Path) -> Path | None:
    pointer = run / "checkpoints" / "LATEST"
    return run / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


def _assert_last_checkpoint_loads(run: Path) -> None:
    latest = _latest(run)
    if latest is None:  # killed before the first checkpoint: nothing to load, the run restarts
        return
    model, _ = load_pretrained(latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(latest / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == int(latest.name.split("-")[1])
    load_pretrained(run)  # the run folder itself (checkpoints/best) loads too


def _kill_and_resume(start: list[str], resume: list[str], run: Path, env: dict, seed: int, kills: int = 4,
                     window: tuple[float, float] = (1.0, 4.0)) -> list[str]:
    """Start `start`, SIGKILL it at `kills` random moments (restarting with `resume` once a checkpoint exists),
    then let the last process finish; returns what each kill found (for the failure message)."""
    rng = random.Random(seed)
    notes = []
    command = start
    for _ in range(kills):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(*window))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read()
        latest = _latest(run)
        notes.append(f"killed (rc {proc.returncode}) with LATEST {latest.name if latest else None}")
        if proc.returncode not in (-signal.SIGKILL, 0):
            raise AssertionError(f"the run failed before the kill: {err}")
        _assert_last_checkpoint_loads(run)
        command = resume if latest is not None else start
        if proc.returncode == 0:
            break
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, f"{notes}\n{final.stderr}"
    assert _debris(run) == [], notes
    return notes


def test_gpt_training_survives_random_kills_and_resumes_exactly(tmp_path, synthetic_corpus, dlforge_cmd,
                                                                 subprocess_env):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(synthetic_corpus, encoding="utf-8")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", "gpt", "--data", str(corpus), "--out", str(reference), *GPT_RUN]) == 0
    start = dlforge_cmd("train", "gpt", "--data", str(corpus), "--out", str(run), *GPT_RUN)
    resume = dlforge_cmd("train", "gpt", "--out", str(run), "--resume", "--quiet")
    _kill_and_resume(start, resume, run, subprocess_env, seed=1)
    # a checkpoint every 3 steps with keep_last=1: the kills land in training, saving and pruning alike
    final = load_file(run / "checkpoints" / "step-0000150" / "model.safetensors")
    expected = load_file(reference / "checkpoints" / "step-0000150" / "model.safetensors")
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["LATEST", "best", "step-0000150"]


def test_finetune_and_anomaly_fit_survive_random_kills(tmp_path, pattern_mnist, finetune_data, dlforge_cmd,
                                                        subprocess_env):
    out = tmp_path / "finetune"
    args = ["finetune", "--model", str(finetune_data / "tiny"), "--task", "text-classification", "--train",
            str(finetune_data / "train.tsv"), "--eval", str(finetune_data / "dev.jsonl"), "--out", str(out),
            "--option", "text_column=review", "--max-steps", "60", "--batch-size", "8", "--precision", "fp32",
            "--seed", "1", "--quiet"]
    _kill_and_resume(dlforge_cmd(*args), dlforge_cmd("finetune", "--out", str(out), "--resume", "--quiet"), out,
                     subprocess_env, seed=2, kills=3)
    assert json.loads((out / "report.json").read_text())["training"]["step"] == 60
    anomaly = tmp_path / "anomaly"
    args = ["anomaly", "fit", "--data", str(pattern_mnist), "--normal", "0", "--out", str(anomaly), "--preset",
            "tiny", "--max-steps", "60", "--set", "eval_interval=3", "--set", "eval_images=32", "--set",
            "keep_last=1", "--seed", "3", "--quiet"]
    _kill_and_resume(dlforge_cmd(*args), dlforge_cmd(*args[:-3], "--resume", "--quiet"), anomaly, subprocess_env,
                     seed=3, kills=3)
    assert (anomaly / "anomaly_detector.json").is_file()


def _limit_file_size(limit: int):
    def limit_in_child():  # a file may not grow past `limit` bytes: writes past it fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_in_child


def test_a_full_disk_stops_with_one_line_and_the_run_resumes(tmp_path, synthetic_corpus, dlforge_cmd,
                                                             subprocess_env):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(synthetic_corpus, encoding="utf-8")
    run = tmp_path / "run"
    # a 6-step run, then its resume to 12 steps may write no file larger than half a checkpoint's optimizer state
    tiny = ["--preset", "tiny", "--set", "block_size=16", "--set", "n_layer=1", "--set", "n_embd=32",
            "--set", "eval_interval=6", "--seed", "7", "--quiet"]
    assert main(["train", "gpt", "--data", str(corpus), "--out", str(run), "--max-steps", "6", *tiny]) == 0
    size = (run / "checkpoints" / "step-0000006" / "trainer_state.pt").stat().st_size
    proc = subprocess.run(dlforge_cmd("train", "gpt", "--out", str(run), "--resume", "--max-steps", "12", "--quiet"),
                          env=subprocess_env, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(size // 2))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "cannot write the checkpoint of step 12" in lines[0] and "step-0000006" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert _latest(run).name == "step-0000006"
    _assert_last_checkpoint_loads(run)
    resumed = subprocess.run(dlforge_cmd("train", "gpt", "--out", str(run), "--resume", "--max-steps", "12",
                                         "--quiet"), env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _latest(run).name == "step-0000012" and _debris(run) == []


def test_a_read_only_folder_is_one_line_and_writes_nothing(tmp_path, synthetic_corpus, cli, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(synthetic_corpus, encoding="utf-8")
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", tmp_path / "run", "--preset", "tiny",
                       "--max-steps", "4", "--quiet")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Read-only file system" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_two_concurrent_runs_in_one_folder(tmp_path, synthetic_corpus, dlforge_cmd, subprocess_env):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(synthetic_corpus * 4, encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", "gpt", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--set", "block_size=16",
            "--set", "n_layer=1", "--set", "n_embd=32", "--max-steps", "400", "--set", "eval_interval=5",
            "--seed", "7", "--quiet"]
    first = subprocess.Popen(dlforge_cmd(*args), env=subprocess_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _latest(run) is None and time.monotonic() < deadline:  # the first run has started training
            time.sleep(0.1)
        assert _latest(run) is not None, "the first run did not start"
        for second_args in (args, ["train", "gpt", "--out", str(run), "--resume", "--quiet"]):
            second = subprocess.run(dlforge_cmd(*second_args), env=subprocess_env, capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and ("in use by another dlforge process" in lines[0]
                                        or "already holds" in lines[0]), lines
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    assert _latest(run).name == "step-0000400" and _debris(run) == []


def test_nan_at_a_chosen_step_keeps_the_last_good_checkpoint(tmp_path, synthetic_corpus, cli):
    """A learning rate that makes the loss NaN: the run stops with one line naming the step, LATEST and best are
    the last finite ones, and --resume with a sane rate finishes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(synthetic_corpus, encoding="utf-8")
    run = tmp_path / "run"
    base = ["train", "gpt", "--data", corpus, "--out", run, "--preset", "tiny", "--set", "block_size=16",
            "--set", "n_layer=1", "--set", "n_embd=32", "--set", "eval_interval=2", "--set", "keep_last=1",
            "--set", "precision=fp32", "--seed", "7", "--quiet"]
    # warming up to lr 300: the loss turns NaN after a few good checkpoints (step 14 here)
    code, _, err = cli(*base, "--set", "lr=300", "--set", "warmup_steps=40", "--set", "grad_clip=none",
                       "--max-steps", "40")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "training stopped at step" in err and "learning rate" in err
    latest = _latest(run)
    _assert_last_checkpoint_loads(run)
    for name in (latest.name, "best"):
        weights = load_file(run / "checkpoints" / name / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())
    assert "--resume --set lr=30" in err  # the way on, as the message says (a tenth of the rate)
    code, _, err = cli("train", "gpt", "--out", run, "--resume", "--set", "lr=1e-3", "--quiet")
    assert code == 0, err
    assert _latest(run).name == "step-0000040" and _debris(run) == []


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory) -> Path:
    return make_review_data(tmp_path_factory.mktemp("fault-finetune"))
