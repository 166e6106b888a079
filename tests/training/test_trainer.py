"""The Trainer in-process: learning, gradient accumulation, early stopping, checkpoints, EMA, resume."""

from __future__ import annotations

import csv
import gzip
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dlforge.data import TextBatches
from dlforge.errors import DlforgeError
from dlforge.models import GPT, GPTConfig
from dlforge.text import CharTokenizer
from dlforge.training import TrainConfig, Trainer

VOCAB = 17


def tiny_gpt(vocab: int = VOCAB, block: int = 16, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16, **kw))


def config(**kw) -> TrainConfig:
    base = dict(max_steps=10, lr=1e-3, warmup_steps=0, eval_interval=5, log_interval=5, precision="fp32",
                device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def periodic_batches(block: int = 16, batch: int = 4, seed: int = 0) -> TextBatches:
    ids = (np.arange(4000) * 7 % VOCAB).astype(np.uint16)
    return TextBatches(ids, block, batch, seed=seed, eval_batches=2)


def read_metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights_file(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def snapshot(tensors: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors.items()}


def assert_same_tensors(saved: dict, expected: dict) -> None:
    assert saved, "no tensors"
    for k, v in saved.items():
        assert torch.equal(v, expected[k]), f"{k} differs"


# ---------------------------------------------------------------------------------- learning
def bundled_shakespeare(n_bytes: int = 100_000) -> str:
    """The first ~100 KB of the tiny Shakespeare that ships with dlforge (`dlforge demo`'s corpus), cut after
    a newline: real text that every checkout has."""
    packed = resources.files("dlforge").joinpath("assets/tinyshakespeare.txt.gz").read_bytes()
    head = gzip.decompress(packed)[:n_bytes].decode("utf-8", errors="ignore")
    return head[: head.rfind("\n") + 1]


def test_loss_decreases_on_real_text(tmp_path):
    text = bundled_shakespeare()
    tok = CharTokenizer.train(text)
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=64))
    data = TextBatches(ids, 64, 16, seed=0, eval_batches=4)
    trainer = Trainer(model, config(max_steps=100, lr=2e-3, warmup_steps=10, eval_interval=100, log_interval=10),
                      data, tmp_path / "run", tokenizer=tok, progress=False)
    initial = trainer.evaluate()
    # an untrained model is close to uniform over the characters (ln 65 = 4.17)
    assert initial == pytest.approx(math.log(tok.vocab_size), abs=0.15)
    result = trainer.fit()
    # measured: 2.53-2.57 after 100 steps for seeds 0-2; unigram statistics alone give ~3.3
    assert result["val_loss"] < 2.8, result
    assert result["best_val_loss"] == result["val_loss"]
    train_losses = [float(r["train_loss"]) for r in read_metrics(tmp_path / "run") if r["train_loss"]]
    # every 10 steps, plus the evaluations at a third and two thirds of the schedule (eval_interval is the length)
    assert len(train_losses) == 12
    assert [int(r["step"]) for r in read_metrics(tmp_path / "run") if r["val_loss"]] == [34, 67, 100]
    assert train_losses[-1] < train_losses[0] - 1.0


def test_metrics_csv_and_loss_png_after_a_run(tmp_path):
    run = tmp_path / "run"
    result = Trainer(tiny_gpt(), config(max_steps=10), periodic_batches(), run, progress=False).fit()
    assert result["step"] == 10 and result["stop_reason"] == "reached max_steps=10"
    rows = read_metrics(run)
    assert list(rows[0]) == ["step", "train_loss", "val_loss", "lr", "throughput", "elapsed_s"]
    # every 5 steps, and at step 4: nothing evaluated the first third of the schedule (at least 3 evaluations)
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [4, 5, 10]
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [4, 5, 10]
    assert float(rows[-1]["val_loss"]) == pytest.approx(result["val_loss"], rel=1e-5)
    png = (run / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-0000010"
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


# ---------------------------------------------------------------------------------- grad accumulation
class FixedBatches:
    """train_batch returns a fixed batch per micro-step (the same at every step)."""

    def __init__(self, micro_batches: list[dict]):
        self.micro_batches = micro_batches

    def train_batch(self, step, micro_step=0, rank=0, world_size=1):
        return self.micro_batches[micro_step]

    def eval_batches(self, rank=0, world_size=1):
        yield self.micro_batches[0]


def test_grad_accum_of_two_halves_equals_one_full_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, VOCAB, (8, 17), generator=g)
    full = {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}
    halves = [{k: v[:4] for k, v in full.items()}, {k: v[4:] for k, v in full.items()}]
    lr = 1e-3

    def one_step(data, accum, name):
        model = tiny_gpt(seed=1)
        trainer = Trainer(model, config(max_steps=1, grad_accum=accum, eval_interval=1, lr=lr, grad_clip=None),
                          data, tmp_path / name, progress=False)
        initial = snapshot(model.state_dict())
        grads = {}
        real_step = trainer.optimizer.step

        def step_recording_grads(*args, **kwargs):
            grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return real_step(*args, **kwargs)

        trainer.optimizer.step = step_recording_grads
        trainer.fit()
        return initial, grads, snapshot(model.state_dict())

    init_a, grads_a, after_a = one_step(FixedBatches(halves), 2, "accum")
    init_b, grads_b, after_b = one_step(FixedBatches([full]), 1, "full")
    assert_same_tensors(init_a, init_b)
    # the accumulated gradient is the full batch's gradient (mean loss over equal halves)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-7, msg=k)
    moved = max((after_a[k] - init_a[k]).abs().max().item() for k in after_a)
    assert moved > 0.5 * lr, "the optimizer step did nothing"
    # Adam's first step is lr * g / (|g| + eps): for near-zero gradients it amplifies rounding, so the
    # weights agree to a small fraction of one step rather than to 1e-6 absolute
    for k in after_a:
        torch.testing.assert_close(after_a[k], after_b[k], rtol=0, atol=2e-3 * lr, msg=k)
    train_a = [r for r in read_metrics(tmp_path / "accum") if r["train_loss"]]
    train_b = [r for r in read_metrics(tmp_path / "full") if r["train_loss"]]
    assert float(train_a[0]["train_loss"]) == pytest.approx(float(train_b[0]["train_loss"]), rel=1e-5)


def test_grad_accum_calls_backward_per_micro_batch(tmp_path, monkeypatch):
    calls = []

    class Counting(FixedBatches):
        def train_batch(self, step, micro_step=0, rank=0, world_size=1):
            calls.append((step, micro_step))
            return super().train_batch(step, 0)

    rows = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(0))
    data = Counting([{"input_ids": rows[:, :-1], "targets": rows[:, 1:]}])
    Trainer(tiny_gpt(), config(max_steps=3, grad_accum=3, eval_interval=3), data, tmp_path / "run",
            progress=False).fit()
    assert calls == [(s, m) for s in range(3) for m in range(3)]


# ---------------------------------------------------------------------------------- early stopping
def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path):
    values = iter([3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 0.1, 0.1])
    trainer = Trainer(tiny_gpt(), config(max_steps=100, eval_interval=2, log_interval=2,
                                         early_stopping_patience=2), periodic_batches(), tmp_path / "run",
                      progress=False)
    trainer.evaluate = lambda: next(values)
    result = trainer.fit()
    # evals at 2, 4 (best), 6 (1 bad), 8 (best, counter reset), 10 (1 bad), 12 (2 bad -> stop)
    assert result["step"] == 12
    assert result["stop_reason"] == "early stopping: no improvement in 2 evaluations"
    assert result["best_val_loss"] == 1.5 and result["val_loss"] == 1.7
    assert [float(r["val_loss"]) for r in read_metrics(tmp_path / "run") if r["val_loss"]] == \
        [3.0, 2.0, 2.5, 1.5, 1.6, 1.7]
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-0000012" / "trainer_state.pt", weights_only=True)
    assert state["evals_without_improvement"] == 2 and state["best_val"] == 1.5


def test_constant_val_loss_stops_after_patience(tmp_path):
    trainer = Trainer(tiny_gpt(), config(max_steps=100, eval_interval=3, early_stopping_patience=1),
                      periodic_batches(), tmp_path / "run", progress=False)
    trainer.evaluate = lambda: 2.0
    result = trainer.fit()
    assert result["step"] == 6 and result["stop_reason"].startswith("early stopping")


# ---------------------------------------------------------------------------------- checkpoints
def test_keep_last_prunes_step_checkpoints_but_keeps_best(tmp_path):
    values = iter([5.0, 1.0, 3.0, 4.0, 6.0])  # best at step 4
    seen = {}
    trainer = Trainer(tiny_gpt(), config(max_steps=10, eval_interval=2, log_interval=2, keep_last=2),
                      periodic_batches(), tmp_path / "run",
                      on_eval=lambda t, m: seen.__setitem__(m["step"], snapshot(t.model.state_dict())),
                      progress=False)
    trainer.evaluate = lambda: next(values)
    trainer.fit()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "best", "step-0000008", "step-0000010"]
    assert (root / "LATEST").read_text().strip() == "step-0000010"
    assert_same_tensors(weights_file(root / "best"), seen[4])
    assert_same_tensors(weights_file(root / "step-0000010"), seen[10])
    assert not torch.equal(seen[4]["transformer.wte.weight"], seen[10]["transformer.wte.weight"])
    assert {"config.json", "model.safetensors"} <= {p.name for p in (root / "best").iterdir()}
    for step_dir in ("step-0000008", "step-0000010"):
        assert (root / step_dir / "trainer_state.pt").is_file()


def test_keep_last_one(tmp_path):
    Trainer(tiny_gpt(), config(max_steps=6, eval_interval=2, keep_last=1), periodic_batches(),
            tmp_path / "run", progress=False).fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert names == ["step-0000006"]


def test_new_run_in_a_folder_with_checkpoints_is_refused(tmp_path):
    Trainer(tiny_gpt(), config(max_steps=5), periodic_batches(), tmp_path / "run", progress=False).fit()
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(DlforgeError, match="already holds a training run.*--resume"):
        Trainer(tiny_gpt(), config(max_steps=5), periodic_batches(), tmp_path / "run", progress=False).fit()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_resume_in_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    trainer = Trainer(tiny_gpt(), config(), periodic_batches(), tmp_path / "run", progress=False)
    with pytest.raises(DlforgeError, match="nothing to resume"):
        trainer.fit(resume=True)
    with pytest.raises(DlforgeError, match="nothing to resume"):  # a folder that does not exist at all
        Trainer(tiny_gpt(), config(), periodic_batches(), tmp_path / "nope", progress=False).fit(resume=True)


def test_resume_refuses_an_incomplete_checkpoint(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_gpt(), config(max_steps=5), periodic_batches(), run, progress=False).fit()
    (run / "checkpoints" / "step-0000005" / "trainer_state.pt").unlink()
    with pytest.raises(DlforgeError, match="incomplete"):
        Trainer(tiny_gpt(), config(max_steps=10), periodic_batches(), run, progress=False).fit(resume=True)


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    """Crash right after the step-6 checkpoint, resume with a differently initialised model."""
    cfg = dict(max_steps=12, eval_interval=3, log_interval=3, lr=3e-3)
    full = tiny_gpt(dropout=0.1)
    Trainer(full, config(**cfg), periodic_batches(), tmp_path / "full", progress=False).fit()

    class Crash(Exception):
        pass

    def crash_at_6(trainer, metrics):
        if metrics["step"] == 6:
            raise Crash

    with pytest.raises(Crash):
        Trainer(tiny_gpt(dropout=0.1), config(**cfg), periodic_batches(), tmp_path / "cut", on_eval=crash_at_6,
                progress=False).fit()
    resumed_model = tiny_gpt(seed=99, dropout=0.1)
    result = Trainer(resumed_model, config(**cfg), periodic_batches(), tmp_path / "cut", progress=False).fit(
        resume=True)
    assert result["step"] == 12
    assert_same_tensors(resumed_model.state_dict(), full.state_dict())
    cut_rows, full_rows = read_metrics(tmp_path / "cut"), read_metrics(tmp_path / "full")
    strip = lambda rows: [(r["step"], r["train_loss"], r["val_loss"], r["lr"]) for r in rows]
    assert strip(cut_rows) == strip(full_rows)


@pytest.mark.parametrize("moment", ["before", "after"])
def test_crash_around_the_latest_update_keeps_every_metrics_row(tmp_path, monkeypatch, moment):
    """Die just before / just after LATEST moves to step 8; the resumed metrics.csv has each row once."""
    import dlforge.training.trainer as trainer_module

    class Killed(Exception):
        pass

    run = tmp_path / "run"
    cfg = dict(max_steps=12, eval_interval=4, log_interval=4)
    real_write = trainer_module.atomic_write_text

    def write_then_die(target, text):
        if Path(target).name == "LATEST" and text.strip() == "step-0000008":
            if moment == "after":
                real_write(target, text)
            raise Killed
        real_write(target, text)

    monkeypatch.setattr(trainer_module, "atomic_write_text", write_then_die)
    with pytest.raises(Killed):
        Trainer(tiny_gpt(), config(**cfg), periodic_batches(), run, progress=False).fit()
    monkeypatch.setattr(trainer_module, "atomic_write_text", real_write)
    assert (run / "checkpoints" / "LATEST").read_text().strip() == \
        ("step-0000008" if moment == "after" else "step-0000004")
    Trainer(tiny_gpt(), config(**cfg), periodic_batches(), run, progress=False).fit(resume=True)
    rows = read_metrics(run)
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [4, 8, 12]
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [4, 8, 12]
    reference = tmp_path / "reference"
    Trainer(tiny_gpt(), config(**cfg), periodic_batches(), reference, progress=False).fit()
    strip = lambda rs: [(r["step"], r["train_loss"], r["val_loss"], r["lr"]) for r in rs]
    assert strip(rows) == strip(read_metrics(reference))


# ---------------------------------------------------------------------------------- time budget
def test_time_budget_stops_and_saves(tmp_path):
    result = Trainer(tiny_gpt(), config(max_steps=1000, max_minutes=1e-6, eval_interval=500),
                     periodic_batches(), tmp_path / "run", progress=False).fit()
    assert result["stop_reason"].startswith("time budget")
    assert result["step"] < 1000
    latest = (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip()
    assert latest == f"step-{result['step']:07d}"
    assert (tmp_path / "run" / "checkpoints" / "best" / "model.safetensors").is_file()


class SlowStartBatches(TextBatches):
    """Batches whose first 25 steps take 0.1 s each, like kernels built for new shapes, then fast ones."""

    def train_batch(self, step, *args):
        if step < 25:
            time.sleep(0.1)
        return super().train_batch(step, *args)


def test_time_budget_refines_an_estimate_skewed_by_slow_first_steps(tmp_path):
    """Fitting the schedule on steps 5-25 alone would plan ~60 steps for 6 s; the refinement sees the fast ones."""
    ids = (np.arange(4000) * 7 % VOCAB).astype(np.uint16)
    trainer = Trainer(tiny_gpt(), config(max_steps=100_000, max_minutes=0.1, eval_interval=100_000),
                      SlowStartBatches(ids, 16, 4, seed=0, eval_batches=2), tmp_path / "run", progress=False)
    result = trainer.fit()
    assert result["step"] > 150, result
    assert result["elapsed_s"] < 6.5, result


def test_time_spent_evaluating_does_not_spend_the_schedule(tmp_path):
    """Under a time budget the schedule moves by steps at the current pace: a 1.5 s evaluation (a quarter of the
    6 s budget) leaves the learning rate where it was, instead of jumping a quarter of the way down the decay."""
    trainer = Trainer(tiny_gpt(), config(max_steps=100_000, max_minutes=0.1, eval_interval=100_000, log_interval=1,
                                         warmup_steps=0, lr=1e-2, min_lr=0.0),
                      periodic_batches(), tmp_path / "run", progress=False)
    real_evaluate, calls = trainer.evaluate, []

    def slow_evaluate():  # the first evaluation is slow
        if not calls:
            time.sleep(1.5)
        calls.append(1)
        return real_evaluate()

    trainer.evaluate = slow_evaluate
    result = trainer.fit()
    rows = read_metrics(tmp_path / "run")
    lrs = {int(r["step"]): float(r["lr"]) for r in rows if r["lr"]}
    evals = [int(r["step"]) for r in rows if r["val_loss"]]
    first = evals[0]  # the evaluation at a third of the schedule
    assert first + 2 < result["step"] and first + 2 in lrs
    # the step after the evaluation (whose time is counted from the next one on) keeps the rate: scheduling by
    # the share of time used dropped it from 7.5e-3 to 2.4e-3 here, and crossed the next third at once
    assert lrs[first + 2] == pytest.approx(lrs[first], rel=0.02)
    assert evals[1] - first > 100
    assert lrs[result["step"]] < 1e-3  # and the decay still ends with the budget


def test_time_budget_stop_logs_the_last_train_loss(tmp_path):
    """Regression: a run cut short between log_interval steps still logs its last train loss."""
    Trainer(tiny_gpt(), config(max_steps=1000, max_minutes=1e-6, eval_interval=500, log_interval=100),
            periodic_batches(), tmp_path / "run", progress=False).fit()
    rows = read_metrics(tmp_path / "run")
    train = [r for r in rows if r["train_loss"]]
    val = [r for r in rows if r["val_loss"]]
    assert len(train) == 1 and len(val) == 1 and train[0]["step"] == val[0]["step"]


def test_early_stop_logs_the_last_train_loss(tmp_path):
    trainer = Trainer(tiny_gpt(), config(max_steps=100, eval_interval=3, log_interval=50, early_stopping_patience=1),
                      periodic_batches(), tmp_path / "run", progress=False)
    trainer.evaluate = lambda: 2.0
    assert trainer.fit()["step"] == 6
    assert [int(r["step"]) for r in read_metrics(tmp_path / "run") if r["train_loss"]] == [3, 6]


# ---------------------------------------------------------------------------------- EMA
def test_ema_run_evaluates_and_saves_best_from_ema_weights(tmp_path):
    run = tmp_path / "run"
    seen = {}

    def record(trainer, metrics):
        seen[metrics["step"]] = (metrics["val_loss"], snapshot(trainer.model.state_dict()),
                                 snapshot(trainer.ema.shadow))

    model = tiny_gpt(tie_embeddings=False)
    data = periodic_batches()
    trainer = Trainer(model, config(max_steps=9, eval_interval=3, ema_decay=0.8, lr=1e-2), data, run,
                      on_eval=record, progress=False)
    trainer.fit()
    best_step = min(seen, key=lambda s: seen[s][0])
    _, raw, ema = seen[best_step]
    best = weights_file(run / "checkpoints" / "best")
    assert_same_tensors(best, ema)
    assert any(not torch.equal(best[k], raw[k]) for k in best), "EMA weights equal the raw ones"
    # step checkpoints hold the raw weights and the EMA state for resuming
    assert_same_tensors(weights_file(run / "checkpoints" / "step-0000009"), seen[9][1])
    state = torch.load(run / "checkpoints" / "step-0000009" / "trainer_state.pt", weights_only=True)
    assert state["ema"]["decay"] == 0.8
    assert_same_tensors(state["ema"]["shadow"], seen[9][2])
    # evaluate() reports the loss of the EMA weights and leaves the raw weights in the model
    raw_now = snapshot(model.state_dict())
    val = trainer.evaluate()
    assert_same_tensors(model.state_dict(), raw_now)
    probe = tiny_gpt(tie_embeddings=False)
    probe.load_state_dict(trainer.ema.shadow)
    probe.eval()
    with torch.no_grad():
        losses = [probe(**b).loss.item() for b in data.eval_batches()]
    assert val == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_ema_evaluate_keeps_tied_model_weights(tmp_path):
    """Regression: evaluating with EMA must not leave the average in the tied wte/lm_head weight."""
    model = tiny_gpt()
    trainer = Trainer(model, config(max_steps=3, eval_interval=100, ema_decay=0.5, lr=1e-2), periodic_batches(),
                      tmp_path / "run", progress=False)
    trainer.fit()
    raw = snapshot(model.state_dict())
    trainer.evaluate()
    assert_same_tensors(model.state_dict(), raw)
