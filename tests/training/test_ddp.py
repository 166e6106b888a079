"""Two CPU processes under torchrun (gloo) train exactly like one process with the same global batch.

Each rank takes its slice of every global batch, DDP averages the gradients and the logged losses
are averaged across ranks, so the metrics of a 2-process run match a 1-process run up to float
rounding (fp32, dropout 0).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TIMEOUT = 240

DRIVER = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch

    from dlforge.data import TextBatches
    from dlforge.models import GPT, GPTConfig
    from dlforge.text import CharTokenizer
    from dlforge.training import Trainer, TrainConfig
    from dlforge.training.distributed import shutdown_distributed

    data_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    text = data_file.read_text(encoding="utf-8")
    tok = CharTokenizer.train(text)
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    data = TextBatches(ids, 32, 8, seed=3, eval_batches=4)
    config = TrainConfig(max_steps=20, eval_interval=10, log_interval=5, lr=3e-3, warmup_steps=5,
                         precision="fp32", device="cpu", seed=3)
    trainer = Trainer(model, config, data, out, tokenizer=tok, progress=False)
    result = trainer.fit()
    rank = trainer.dist.rank
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / f"final-rank{rank}.pt")
    result.update(world_size=trainer.dist.world_size, ddp=trainer.ddp is not None)
    (out / f"result-rank{rank}.json").write_text(json.dumps(result))
    shutdown_distributed(trainer.dist)
''')


def torchrun(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            f"--master_port={port}", *args]


def metrics(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = {int(r["step"]): float(r["train_loss"]) for r in rows if r["train_loss"]}
    val = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    return train, val


def run_ok(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_same_curves(single: Path, double: Path, train_steps, val_steps) -> None:
    train1, val1 = metrics(single)
    train2, val2 = metrics(double)
    assert sorted(train1) == sorted(train2) == list(train_steps)
    assert sorted(val1) == sorted(val2) == list(val_steps)
    for step in train1:
        assert train2[step] == pytest.approx(train1[step], rel=1e-3), f"train loss at step {step}"
    for step in val1:
        assert val2[step] == pytest.approx(val1[step], rel=1e-3), f"val loss at step {step}"


def test_two_processes_match_one_process(tmp_path, synthetic_text_file, subprocess_env, free_port):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    single, double = tmp_path / "single", tmp_path / "double"
    # the 1-process reference runs alongside the 2-process run (one thread each)
    reference = subprocess.Popen([sys.executable, str(driver), str(synthetic_text_file), str(single)],
                                 env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_ok(torchrun(free_port, str(driver), str(synthetic_text_file), str(double)), subprocess_env)
        output, _ = reference.communicate(timeout=TIMEOUT)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    assert reference.returncode == 0, output

    results = [json.loads((double / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["ddp"] for r in results)
    assert results[0]["val_loss"] == results[1]["val_loss"]  # all-reduced, so every rank sees the same
    single_result = json.loads((single / "result-rank0.json").read_text())
    assert single_result["world_size"] == 1 and not single_result["ddp"]
    assert results[0]["val_loss"] == pytest.approx(single_result["val_loss"], rel=1e-4)

    # every 10 steps, and at step 7: nothing evaluated the first third of the schedule (at least 3 evaluations)
    assert_same_curves(single, double, (5, 7, 10, 15, 20), (7, 10, 20))

    # DDP keeps the replicas identical, and they match the single-process weights up to rounding
    w0, w1 = (torch.load(double / f"final-rank{r}.pt", weights_only=True) for r in (0, 1))
    w_single = torch.load(single / "final-rank0.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
        torch.testing.assert_close(w0[k], w_single[k], rtol=1e-3, atol=1e-4, msg=k)
    # only rank 0 writes the run folder
    assert (double / "checkpoints" / "LATEST").read_text().strip() == "step-0000020"
    assert sorted(p.name for p in double.glob("metrics*")) == ["metrics.csv"]


RANK1_DELAY = textwrap.dedent('''
    import os, time
    if os.environ.get("RANK") == "1":
        time.sleep(float(os.environ.get("DLFORGE_TEST_RANK1_DELAY", "0")))
''')


def test_cli_under_torchrun_matches_one_process(tmp_path, synthetic_text_file, subprocess_env, free_port,
                                                 dlforge_cmd):
    """`torchrun -m dlforge train gpt` (regression: the later rank used to find the other's run.json)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RANK1_DELAY)  # rank 1 starts 1.5 s after rank 0
    pythonpath = os.pathsep.join(filter(None, [str(site), subprocess_env.get("PYTHONPATH")]))
    env = dict(subprocess_env, PYTHONPATH=pythonpath, DLFORGE_TEST_RANK1_DELAY="1.5")
    common = ["--data", str(synthetic_text_file), "--preset", "tiny", "--set", "eval_interval=10",
              "--set", "dropout=0", "--set", "precision=fp32", "--set", "device=cpu", "--max-steps", "20",
              "--seed", "3", "--quiet"]
    double, single = tmp_path / "double", tmp_path / "single"
    reference = subprocess.Popen(dlforge_cmd("train", "gpt", "--out", str(single), *common), env=subprocess_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc = run_ok(torchrun(free_port, "-m", "dlforge", "train", "gpt", "--out", str(double), *common), env)
        output, _ = reference.communicate(timeout=TIMEOUT)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    assert reference.returncode == 0, output
    assert proc.stdout.count("done: reached max_steps=20") == 1  # only rank 0 reports
    assert_same_curves(single, double, (7, 10, 20), (7, 10, 20))
    # rank 0 alone prepared the run: one tokenizer, one token file, the same vocabulary as one process
    assert json.loads((double / "tokenizer.json").read_text()) == json.loads((single / "tokenizer.json").read_text())
    assert (double / "data" / "tokens.bin").read_bytes() == (single / "data" / "tokens.bin").read_bytes()
    assert not list(double.rglob("*.tmp"))
