"""The Trainer under faults: non-finite losses, a new length on resume, time budgets on a changing machine,
disk full, crafted LATEST pointers, pruning debris, and a folder that another process trains in."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_trainer import VOCAB, config, periodic_batches, read_metrics, tiny_gpt

from dlforge.data import TextBatches
from dlforge.errors import DlforgeError
from dlforge.models import GPT
from dlforge.training import Trainer


class PoisonedBatches(TextBatches):
    """Periodic batches whose training batch at the chosen steps makes the loss NaN (a NaN input embedding)."""

    def __init__(self, *args, poisoned=(), **kw):
        super().__init__(*args, **kw)
        self.poisoned = set(poisoned)

    def train_batch(self, step, *args):
        batch = super().train_batch(step, *args)
        if step in self.poisoned:
            batch["poison"] = torch.tensor(True)
        return batch


class PoisonableGPT(GPT):
    """A tiny GPT whose loss is NaN when the batch says so."""

    def __init__(self):
        super().__init__(tiny_gpt().config)
        self.load_state_dict(tiny_gpt().state_dict())

    def forward(self, poison=None, **batch):
        out = super().forward(**batch)
        if poison is not None and bool(poison):
            out.loss = out.loss * float("nan")
        return out


def poisoned(steps, **kw):
    ids = (np.arange(4000) * 7 % VOCAB).astype(np.uint16)
    return PoisonedBatches(ids, 16, 4, seed=0, eval_batches=2, poisoned=steps, **kw)


def test_nan_loss_stops_before_the_step_and_keeps_the_good_checkpoints(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(PoisonableGPT(), config(max_steps=20, eval_interval=5, keep_last=1), poisoned({7}), run,
                      progress=False)
    with pytest.raises(DlforgeError, match=r"training stopped at step 8: the loss is nan.*step-0000005.*kept"):
        trainer.fit()
    assert trainer.step == 7  # the poisoned batch was not applied
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-0000005"
    assert (run / "checkpoints" / "step-0000005" / "trainer_state.pt").is_file()
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


def test_after_a_nan_stop_resume_with_on_nan_skip_finishes(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DlforgeError, match="step 8"):
        Trainer(PoisonableGPT(), config(max_steps=12, eval_interval=5), poisoned({7}), run, progress=False).fit()
    result = Trainer(PoisonableGPT(), config(max_steps=12, eval_interval=5, on_nan="skip"), poisoned({7}), run,
                     progress=False).fit(resume=True)
    assert result["step"] == 12 and result["skipped_steps"] == 1
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-0000012"


def test_on_nan_skip_skips_the_batch_and_finishes(tmp_path):
    trainer = Trainer(PoisonableGPT(), config(max_steps=12, eval_interval=6, on_nan="skip"), poisoned({3, 8}),
                      tmp_path / "run", progress=False)
    result = trainer.fit()
    assert result["step"] == 12 and result["skipped_steps"] == 2
    assert math.isfinite(result["val_loss"])


def test_on_nan_skip_still_stops_when_every_batch_is_bad(tmp_path):
    trainer = Trainer(PoisonableGPT(), config(max_steps=50, on_nan="skip"), poisoned(range(50)), tmp_path / "run",
                      progress=False)
    with pytest.raises(DlforgeError, match="10 batches in a row"):
        trainer.fit()


def test_diverging_weights_are_never_saved(tmp_path):
    """lr=1e6: the loss may stay finite for a step while the weights blow up; the evaluation catches it."""
    run = tmp_path / "run"
    trainer = Trainer(tiny_gpt(), config(max_steps=30, lr=1e6, eval_interval=3, grad_clip=None),
                      periodic_batches(), run, progress=False)
    with pytest.raises(DlforgeError, match="training stopped at step"):
        trainer.fit()
    latest = run / "checkpoints" / "LATEST"
    if latest.is_file():  # whatever was saved is finite
        from dlforge.hub.weights import load_state_dict

        name = latest.read_text().strip()
        assert all(torch.isfinite(t).all() for t in load_state_dict(run / "checkpoints" / name).values())
        assert all(torch.isfinite(t).all() for t in load_state_dict(run / "checkpoints" / "best").values())


def test_resume_with_a_new_max_steps_stretches_the_rest_of_the_schedule(tmp_path):
    run = tmp_path / "run"
    cfg = dict(max_steps=20, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=10, log_interval=1)
    trainer = Trainer(tiny_gpt(), config(**cfg), periodic_batches(), run, progress=False)
    # stop after step 10 as a kill would (the checkpoint of step 10 is written at its evaluation)
    from dlforge.training.trainer import Trainer as T

    original = T._train_step

    def stop_after_10(self):
        if self.step == 10:
            raise KeyboardInterrupt
        return original(self)

    T._train_step = stop_after_10
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        T._train_step = original
    lr_at_10 = [float(r["lr"]) for r in read_metrics(run) if r["lr"]][-1]
    resumed = Trainer(tiny_gpt(), config(**{**cfg, "max_steps": 40}), periodic_batches(), run, progress=False)
    result = resumed.fit(resume=True)
    assert result["step"] == 40
    lrs = {int(r["step"]): float(r["lr"]) for r in read_metrics(run) if r["lr"]}
    # step 11 takes the rate the 20-step schedule had there: no jump back to the peak or down to min_lr
    assert lrs[10] == lr_at_10 and lrs[10] - lrs[11] <= 1.2 * (lrs[9] - lrs[10])
    assert lrs[40] == pytest.approx(1e-3, rel=0.05)  # the decay still ends at min_lr, now at step 40
    assert all(lrs[s] >= lrs[s + 1] for s in range(11, 40))  # still decaying, stretched over 30 steps
    # shortening works the same way
    shorter = Trainer(tiny_gpt(), config(**{**cfg, "max_steps": 45}), periodic_batches(), run, progress=False)
    assert shorter.fit(resume=True)["step"] == 45


class ChangingPaceBatches(TextBatches):
    """Fast steps, then (from `slow_from`) slow ones: another job starts on the machine."""

    def __init__(self, *args, slow_from: int, delay: float, **kw):
        super().__init__(*args, **kw)
        self.slow_from, self.delay = slow_from, delay

    def train_batch(self, step, *args):
        if step >= self.slow_from:
            time.sleep(self.delay)
        return super().train_batch(step, *args)


def test_time_budget_warms_up_decays_fully_and_evaluates_three_times_when_the_pace_changes(tmp_path):
    ids = (np.arange(4000) * 7 % VOCAB).astype(np.uint16)
    batches = ChangingPaceBatches(ids, 16, 4, seed=0, eval_batches=2, slow_from=40, delay=0.02)
    # warmup is 10 % of the planned 1000 steps: 10 % of the budget
    cfg = config(max_steps=1000, max_minutes=0.06, lr=1e-2, min_lr=1e-4, warmup_steps=100, eval_interval=10_000,
                 log_interval=1)
    result = Trainer(tiny_gpt(), cfg, batches, tmp_path / "run", progress=False).fit()
    assert result["stop_reason"].startswith("time budget")
    rows = read_metrics(tmp_path / "run")
    lrs = [float(r["lr"]) for r in rows if r["lr"]]
    assert lrs[0] < 0.5e-2  # it starts in warmup
    assert max(lrs) == pytest.approx(1e-2, rel=0.1)  # reaches the peak
    assert lrs[-1] < 2e-4  # and finishes the decay, although the pace fell midway
    assert len([r for r in rows if r["val_loss"]]) >= 3


def test_disk_full_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(tiny_gpt(), config(max_steps=10, eval_interval=5), periodic_batches(), run, progress=False)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if "step-0000010" in str(f):  # the disk is full when step 10 is saved
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64: file write "
                               "failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DlforgeError, match=r"cannot write the checkpoint of step 10 .*step-0000005\) is intact"):
        trainer.fit()
    monkeypatch.undo()
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-0000005"
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    result = Trainer(tiny_gpt(), config(max_steps=10, eval_interval=5), periodic_batches(), run,
                     progress=False).fit(resume=True)
    assert result["step"] == 10


@pytest.mark.parametrize("pointer", ["../../outside", "/etc", "step-0000005/../../..", "best"])
def test_a_crafted_latest_pointer_is_refused(tmp_path, pointer):
    run = tmp_path / "run"
    Trainer(tiny_gpt(), config(max_steps=5, eval_interval=5), periodic_batches(), run, progress=False).fit()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "trainer_state.pt").write_text("x")
    (run / "checkpoints" / "LATEST").write_text(pointer + "\n")
    with pytest.raises(DlforgeError, match="LATEST"):
        Trainer(tiny_gpt(), config(max_steps=10, eval_interval=5), periodic_batches(), run,
                progress=False).fit(resume=True)


def test_debris_of_a_killed_save_and_prune_is_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_gpt(), config(max_steps=5, eval_interval=5), periodic_batches(), run, progress=False).fit()
    root = run / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f".step-0000010.{dead.pid}.abcd.tmp").mkdir()  # killed while writing
    (root / f".step-0000001.{dead.pid}.efgh.old").mkdir()  # killed while pruning
    (root / ".best.old").mkdir()  # an older version's fixed name
    Trainer(tiny_gpt(), config(max_steps=10, eval_interval=5), periodic_batches(), run,
            progress=False).fit(resume=True)
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "best", "step-0000005", "step-0000010"]


def test_two_processes_cannot_train_in_one_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"from dlforge.io import claim_folder; "
                               f"claim_folder({str(run)!r}); print('held', flush=True); input()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DlforgeError, match="in use by another dlforge process"):
            Trainer(tiny_gpt(), config(), periodic_batches(), run, progress=False).fit()
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "checkpoints" / "LATEST").exists()
