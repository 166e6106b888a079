"""Learning-rate schedule, AdamW parameter groups and weight EMA (dlforge.training.optim)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.models import GPT, GPTConfig
from dlforge.training import EMA, learning_rate, make_adamw

LR, MIN_LR, WARMUP, TOTAL = 1e-3, 1e-4, 10, 110


# ---------------------------------------------------------------------------------- schedule
def test_warmup_is_linear_from_lr_over_warmup_to_lr():
    lrs = [learning_rate(s, LR, MIN_LR, WARMUP, TOTAL) for s in range(WARMUP)]
    assert lrs[0] == pytest.approx(LR / WARMUP)
    assert lrs[WARMUP - 1] == pytest.approx(LR)
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(LR / WARMUP) for d in steps)


def test_cosine_starts_at_lr_ends_at_min_lr_and_decays_monotonically():
    assert learning_rate(WARMUP, LR, MIN_LR, WARMUP, TOTAL) == pytest.approx(LR)
    assert learning_rate(TOTAL, LR, MIN_LR, WARMUP, TOTAL) == pytest.approx(MIN_LR)
    # halfway through the decay the cosine is at the midpoint
    mid = WARMUP + (TOTAL - WARMUP) // 2
    assert learning_rate(mid, LR, MIN_LR, WARMUP, TOTAL) == pytest.approx((LR + MIN_LR) / 2)
    decay = [learning_rate(s, LR, MIN_LR, WARMUP, TOTAL) for s in range(WARMUP, TOTAL + 1)]
    assert all(b < a for a, b in zip(decay, decay[1:])), "cosine decay must be strictly decreasing"
    assert all(MIN_LR - 1e-15 <= v <= LR + 1e-15 for v in decay)
    # past the end it stays at min_lr
    assert learning_rate(TOTAL + 50, LR, MIN_LR, WARMUP, TOTAL) == pytest.approx(MIN_LR)


def test_cosine_formula_at_an_arbitrary_step():
    step = WARMUP + 37
    progress = 37 / (TOTAL - WARMUP)
    expected = MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))
    assert learning_rate(step, LR, MIN_LR, WARMUP, TOTAL) == pytest.approx(expected, rel=1e-12)


def test_constant_decay_and_no_warmup():
    assert [learning_rate(s, LR, MIN_LR, 0, TOTAL, "constant") for s in (0, 50, TOTAL)] == [LR] * 3
    assert learning_rate(0, LR, MIN_LR, 0, TOTAL) == pytest.approx(LR)  # no warmup: cosine from lr
    assert learning_rate(5, LR, MIN_LR, 20, 10) == pytest.approx(LR * 6 / 20)  # warmup longer than run
    assert learning_rate(15, LR, MIN_LR, 10, 10) == LR  # total <= warmup: no decay


# ---------------------------------------------------------------------------------- AdamW groups
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.conv = nn.Conv1d(3, 2, 3)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_make_adamw_decays_only_matrices_and_embeddings():
    model = Small()
    opt = make_adamw(model, lr=3e-4, weight_decay=0.1, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}
    # frozen parameters are in the optimizer too (so gradual unfreezing needs no new optimizer)...
    assert ids(decay["params"]) == ids([model.emb.weight, model.lin.weight, model.conv.weight, model.frozen.weight])
    assert ids(no_decay["params"]) == ids([model.lin.bias, model.norm.weight, model.norm.bias, model.conv.bias,
                                           model.frozen.bias])
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    # ...but a step leaves them alone while they have no gradient
    before = model.frozen.weight.detach().clone()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(model.frozen.weight, before)
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.8, 0.9) for g in opt.param_groups)


def test_make_adamw_on_gpt_counts_tied_weight_once():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    decay, no_decay = make_adamw(model, 1e-3, 0.1).param_groups
    all_params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in all_params}) == len(all_params)
    assert any(p is model.transformer.wte.weight for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])


# ---------------------------------------------------------------------------------- EMA
def _perturb(module: nn.Module, amount: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(amount)


def test_ema_update_follows_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    # integer buffers (BatchNorm's num_batches_tracked) are not averaged
    assert set(ema.shadow) == {k for k, v in theta0.items() if v.is_floating_point()}
    _perturb(model, 1.0)
    ema.update(model)
    theta1 = {k: v.clone() for k, v in model.state_dict().items()}
    for k in ema.shadow:
        torch.testing.assert_close(ema.shadow[k], 0.9 * theta0[k] + 0.1 * theta1[k], rtol=0, atol=1e-6)
    _perturb(model, -3.0)
    ema.update(model)
    for k in ema.shadow:
        expected = 0.9 * (0.9 * theta0[k] + 0.1 * theta1[k]) + 0.1 * model.state_dict()[k]
        torch.testing.assert_close(ema.shadow[k], expected, rtol=0, atol=1e-6)


def test_ema_swap_exchanges_and_swap_twice_restores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    ema = EMA(model, decay=0.5)
    _perturb(model, 2.0)
    ema.update(model)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    avg = {k: v.clone() for k, v in ema.shadow.items()}
    assert any(not torch.equal(raw[k], avg[k]) for k in avg)
    ema.swap(model)
    for k in avg:
        assert torch.equal(model.state_dict()[k], avg[k])
        assert torch.equal(ema.shadow[k], raw[k])
    ema.swap(model)
    for k in raw:
        assert torch.equal(model.state_dict()[k], raw[k])
        assert torch.equal(ema.shadow[k], avg[k])


def test_ema_state_dict_round_trip():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99)
    _perturb(model, 1.0)
    ema.update(model)
    other = EMA(nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99
    for k in ema.shadow:
        assert torch.equal(other.shadow[k], ema.shadow[k])


def test_ema_swap_twice_restores_tied_weights():
    """Regression: GPT's lm_head.weight is transformer.wte.weight; the swap must treat it once."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    assert model.lm_head.weight is model.transformer.wte.weight
    ema = EMA(model, decay=0.5)
    _perturb(model, 1.0)
    ema.update(model)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema.swap(model)
    ema.swap(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k]), f"{k} was not restored"
    assert model.lm_head.weight is model.transformer.wte.weight
    # and the tied weight is averaged like any other
    ema.swap(model)
    expected = 0.5 * (raw["transformer.wte.weight"] - 1.0) + 0.5 * raw["transformer.wte.weight"]
    torch.testing.assert_close(model.lm_head.weight.detach(), expected, rtol=0, atol=1e-6)
    ema.swap(model)


def test_one_cycle_schedule_and_momentum():
    """fastai's one-cycle: lr/25 -> lr over the warmup, then down to lr/(25e4); β1 0.95 -> 0.85 -> 0.95."""
    from dlforge.training.optim import adam_beta1

    lrs = [learning_rate(s, LR, MIN_LR, WARMUP, TOTAL, "one-cycle") for s in range(TOTAL + 1)]
    betas = [adam_beta1(s, 0.9, WARMUP, TOTAL, "one-cycle") for s in range(TOTAL + 1)]
    assert lrs[0] == pytest.approx(LR / 25) and lrs[WARMUP] == pytest.approx(LR) and max(lrs) == pytest.approx(LR)
    assert lrs[TOTAL] == pytest.approx(LR / 25 / 1e4)
    assert all(a <= b for a, b in zip(lrs[:WARMUP], lrs[1:WARMUP + 1]))  # rises, then falls
    assert all(a >= b for a, b in zip(lrs[WARMUP:], lrs[WARMUP + 1:]))
    assert betas[0] == pytest.approx(0.95) and betas[WARMUP] == pytest.approx(0.85)
    assert betas[TOTAL] == pytest.approx(0.95)
    # the β1 goes down exactly when the LR goes up
    assert all((b2 - b1) * (l2 - l1) <= 0 for l1, l2, b1, b2 in zip(lrs, lrs[1:], betas, betas[1:]))
    assert adam_beta1(10, 0.9, WARMUP, TOTAL, "cosine") == 0.9  # other schedules keep their β1


def test_trainer_applies_one_cycle_momentum(tmp_path):
    from dlforge.training.trainer import TrainConfig, Trainer

    class Data:
        def train_batch(self, step, micro=0, rank=0, world_size=1):
            return {"x": torch.ones(4, 2)}

        def eval_batches(self, rank=0, world_size=1):
            yield {"x": torch.ones(4, 2)}

    class Tiny(torch.nn.Module):
        kind = "tiny"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def forward(self, x):
            from dlforge.models.outputs import ModelOutput

            return ModelOutput(loss=self.w(x).pow(2).mean())

    config = TrainConfig(max_steps=3, warmup_steps=2, decay="one-cycle", precision="fp32", eval_interval=100,
                         log_interval=1)
    trainer = Trainer(Tiny(), config, Data(), tmp_path, progress=False)
    trainer._train_step()
    trainer._train_step()  # step 1 of 2 warmup steps: β1 halfway from 0.95 to 0.85
    assert trainer.optimizer.param_groups[0]["betas"][0] == pytest.approx(0.90)
    with pytest.raises(DlforgeError, match="decay must be one of"):
        TrainConfig(decay="linear")
