"""The learning-rate range test (dlforge.training.lr_find): a sensible suggestion on logistic regression, the model
put back bit-exactly, early stopping on divergence, the plot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.models.outputs import ModelOutput
from dlforge.training.lr_find import exponential_lrs, lr_find, plot_lr_find, steepest_descent_lr
from dlforge.training.optim import make_adamw

QUICK = dict(precision="fp32", device="cpu")


class Logistic(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x, labels) -> ModelOutput:
        return ModelOutput(loss=F.binary_cross_entropy_with_logits(self.linear(x).squeeze(-1), labels))


class Blobs:
    """Logistic-regression data (labels drawn from a known logistic model); batch k is a function of k."""

    def __init__(self, d: int = 8, batch_size: int = 64, scale: float = 3.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = scale * torch.randn(d, generator=g) / math.sqrt(d)
        self.d, self.batch_size, self.seed, self.calls = d, batch_size, seed, []

    def train_batch(self, step, micro_step=0, rank=0, world_size=1):
        self.calls.append((step, micro_step))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 17 + micro_step)
        x = torch.randn(self.batch_size, self.d, generator=g)
        labels = (torch.rand(self.batch_size, generator=g) < torch.sigmoid(x @ self.w)).float()
        return {"x": x, "labels": labels}

    def eval_batches(self, rank=0, world_size=1):
        yield self.train_batch(10**6)


def train_loss(lr: float, data: Blobs, steps: int = 100) -> float:
    """Mean loss of the last 10 of `steps` AdamW steps at a constant learning rate (the Trainer's optimizer)."""
    model = Logistic(data.d)
    optimizer = make_adamw(model, lr, 0.0, (0.9, 0.95))
    losses = []
    for step in range(steps):
        loss = model(**data.train_batch(step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return sum(losses[-10:]) / 10


def test_schedule_and_steepest_descent():
    lrs = exponential_lrs(1e-4, 1.0, 5)
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
    assert [b / a for a, b in zip(lrs, lrs[1:])] == pytest.approx([10.0] * 4)
    # falls fastest between the 2nd and 3rd point, and only points before the minimum count
    assert steepest_descent_lr(lrs, [5.0, 4.9, 2.0, 1.0, 9.0]) == pytest.approx(lrs[2])
    assert steepest_descent_lr(lrs, [1.0, 2.0, 3.0, 4.0, 5.0]) is None


def test_suggestion_is_a_good_learning_rate_for_logistic_regression():
    data = Blobs()
    result = lr_find(Logistic(data.d), data, min_lr=1e-6, max_lr=10.0, steps=100, weight_decay=0.0, **QUICK)
    assert result.suggestion is not None and result.min_loss_lr is not None
    sweep = {lr: train_loss(lr, data) for lr in (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)}
    best = min(sweep.values())
    start = train_loss(1e-9, data)
    # both suggestions train nearly as well as the best learning rate of the sweep; the range ends are poor
    for lr in (result.suggestion, result.min_loss_lr):
        assert train_loss(lr, data) < best + 0.1 * (start - best), (lr, sweep)
    assert 1e-3 < result.suggestion < 1.0


def test_model_is_restored_bit_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, labels):
            return ModelOutput(loss=F.binary_cross_entropy_with_logits(self.net(x).squeeze(-1), labels))

    wrapped = Wrapped()
    model[4].weight.grad = torch.full_like(model[4].weight, 0.5)  # a gradient left by the caller stays
    model[3].eval()  # as do per-module modes
    before = {k: v.clone() for k, v in wrapped.state_dict(keep_vars=False).items()}
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in wrapped.named_parameters()}
    rng = torch.get_rng_state()
    result = lr_find(wrapped, Blobs(), min_lr=1e-5, max_lr=1.0, steps=30, **QUICK)
    assert len(set(result.raw_losses)) > 10  # it did train
    after = wrapped.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k],
                                                                                                         after[k])]
    for name, param in wrapped.named_parameters():
        assert (param.grad is None) == (grads[name] is None) and (param.grad is None or torch.equal(param.grad,
                                                                                                      grads[name]))
    assert wrapped.training and model[1].training and not model[3].training
    assert torch.equal(torch.get_rng_state(), rng)


def test_stops_early_when_the_loss_diverges():
    data = Blobs()
    result = lr_find(Logistic(data.d), data, min_lr=1e-4, max_lr=1e4, steps=100, weight_decay=0.0, **QUICK)
    assert result.stopped_early and len(result.lrs) < 100
    assert result.losses[-1] > 4 * min(result.losses)
    assert result.lrs[-1] < 1e4 and result.suggestion < result.lrs[-1]

    class LogLoss(nn.Module):  # log(w) + 10 falls as w does, and is NaN once w < 0
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1.0))

        def forward(self, x, labels):
            return ModelOutput(loss=torch.log(self.w) + 10.0)

    result = lr_find(LogLoss(), data, min_lr=1e-3, max_lr=100.0, steps=60, grad_clip=None, **QUICK)
    assert result.stopped_early and all(math.isfinite(v) for v in result.losses + result.raw_losses)


def test_options_plot_and_errors(tmp_path):
    data = Blobs(batch_size=16)
    result = lr_find(Logistic(data.d), data, min_lr=1e-4, max_lr=1.0, steps=6, grad_accum=2, precision="bf16",
                     device="cpu")
    assert data.calls == [(step, micro) for step in range(6) for micro in range(2)]
    assert len(result.lrs) == 6 and all(math.isfinite(v) for v in result.losses)
    path = plot_lr_find(lr_find(Logistic(data.d), data, min_lr=1e-5, max_lr=10.0, steps=40, **QUICK),
                        tmp_path / "plots" / "lr_find.png", title="logistic regression")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.to_dict()) == {"lrs", "losses", "raw_losses", "suggestion", "min_loss_lr", "stopped_early"}
    with pytest.raises(DlforgeError, match="min_lr < max_lr"):
        lr_find(Logistic(2), data, min_lr=1.0, max_lr=0.1)
    with pytest.raises(DlforgeError, match="precision"):
        lr_find(Logistic(2), data, precision="fp8")
