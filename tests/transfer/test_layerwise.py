"""Fine-tuning strategies: block depth, layer-wise LR decay in the Trainer, top-k freezing, gradual unfreezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toy_task import ToyClassification

from dlforge.models import GPT, Bert, BertConfig, GPTConfig
from dlforge.training import TrainConfig, Trainer
from dlforge.training.layerwise import depth_of
from dlforge.training.optim import learning_rate
from dlforge.transfer import GradualUnfreezing, freeze_below, layerwise_lr_scales, num_blocks, unfreeze_all


def tiny_bert(seed: int = 0, n_layer: int = 2) -> Bert:
    torch.manual_seed(seed)
    return Bert(BertConfig(vocab_size=50, hidden_size=32, n_layer=n_layer, n_head=4, intermediate_size=64,
                           max_position=32, task="sequence-classification", num_labels=2, dropout=0.0))


def tiny_gpt(seed: int = 0, n_layer: int = 2) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=n_layer, n_head=2, n_embd=32))




def config(**kw) -> TrainConfig:
    base = dict(max_steps=20, lr=1e-2, warmup_steps=1, eval_interval=20, log_interval=5, precision="fp32",
                batch_size=16, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def group(name: str) -> str:
    """'embeddings', 'block0', 'block1', ... or 'top' (final norm / head) for a Bert or GPT parameter name."""
    if name.startswith(("embeddings.", "transformer.wte.", "transformer.wpe.")):
        return "embeddings"
    for prefix in ("layers.", "transformer.h."):
        if name.startswith(prefix):
            return "block" + name[len(prefix):].split(".")[0]
    return "top"


def trainable_groups(model: nn.Module) -> set[str]:
    return {group(n) for n, p in model.named_parameters() if p.requires_grad}


def frozen_groups(model: nn.Module) -> set[str]:
    return {group(n) for n, p in model.named_parameters() if not p.requires_grad}


# ---------------------------------------------------------------------------------- depth
@pytest.mark.parametrize("n_layer", [1, 2, 3])
def test_num_blocks(n_layer):
    assert num_blocks(tiny_bert(n_layer=n_layer)) == n_layer
    assert num_blocks(tiny_gpt(n_layer=n_layer)) == n_layer


def test_num_blocks_without_blocks_is_zero():
    assert num_blocks(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))) == 0


@pytest.mark.parametrize("name, depth", [
    ("embeddings.word_embeddings.weight", 0),
    ("embeddings.position_embeddings.weight", 0),
    ("embeddings.norm.weight", 0),
    ("transformer.wte.weight", 0),
    ("transformer.wpe.weight", 0),
    ("layers.0.attn.c_attn.weight", 1),
    ("layers.1.mlp.c_proj.bias", 2),
    ("layers.1.attn.c_attn.lora_A", 2),
    ("transformer.h.0.ln_1.weight", 1),
    ("transformer.h.1.mlp.c_fc.weight", 2),
    ("student.layers.1.ln_2.bias", 2),
    ("head.dense.weight", 3),
    ("head.out_proj.bias", 3),
    ("transformer.ln_f.weight", 3),
    ("lm_head.weight", 3),
])
def test_depth_of(name, depth):
    assert depth_of(name, 2) == depth


def test_depth_of_many_blocks():
    assert depth_of("layers.11.attn.c_proj.weight", 12) == 12
    assert depth_of("transformer.h.10.ln_1.weight", 12) == 11
    assert depth_of("head.weight", 12) == 13


def test_every_bert_and_gpt_parameter_gets_its_depth():
    for model in (tiny_bert(), tiny_gpt()):
        for name, _ in model.named_parameters():
            expected = {"embeddings": 0, "block0": 1, "block1": 2, "top": 3}[group(name)]
            assert depth_of(name, num_blocks(model)) == expected, name


# ---------------------------------------------------------------------------------- layer-wise LR decay
def test_layerwise_lr_scales_bert():
    model = tiny_bert()
    scales = layerwise_lr_scales(model, 0.5)
    assert list(scales) == [n for n, _ in model.named_parameters()]
    expected = {"top": 1.0, "block1": 0.5, "block0": 0.25, "embeddings": 0.5**3}
    for name, scale in scales.items():
        assert scale == pytest.approx(expected[group(name)]), name
    assert scales["head.out_proj.weight"] == 1.0
    assert scales["layers.1.attn.c_attn.weight"] == pytest.approx(0.5)
    assert scales["embeddings.word_embeddings.weight"] == pytest.approx(0.125)


def test_layerwise_lr_scales_gpt():
    scales = layerwise_lr_scales(tiny_gpt(n_layer=3), 0.8)
    assert scales["transformer.ln_f.weight"] == 1.0
    assert scales["transformer.h.2.mlp.c_fc.weight"] == pytest.approx(0.8)
    assert scales["transformer.h.0.attn.c_attn.weight"] == pytest.approx(0.8**3)
    assert scales["transformer.wte.weight"] == pytest.approx(0.8**4)


def test_trainer_applies_layerwise_lr_decay_to_optimizer_groups(tmp_path):
    model = tiny_bert()
    c = config(lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=10, layer_lr_decay=0.5)
    trainer = Trainer(model, c, ToyClassification(n_eval=1), tmp_path / "run", progress=False)
    scales = layerwise_lr_scales(model, 0.5)
    param_scale = {id(p): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(param_scale) == len(named)
    for name, p in named.items():
        assert param_scale[id(p)] == pytest.approx(scales[name]), name
    assert {round(g["lr_scale"], 6) for g in trainer.optimizer.param_groups} == {1.0, 0.5, 0.25, 0.125}

    for step in range(6):  # warmup steps 0..3, then cosine decay
        trainer._train_step()
        lr = learning_rate(step, 1e-3, 1e-4, 4, 10)
        assert trainer.current_lr == pytest.approx(lr)
        for g in trainer.optimizer.param_groups:
            assert g["lr"] == pytest.approx(lr * g["lr_scale"], rel=1e-12)
    head_group = next(g for g in trainer.optimizer.param_groups
                      if any(p is named["head.out_proj.weight"] for p in g["params"]))
    emb_group = next(g for g in trainer.optimizer.param_groups
                     if any(p is named["embeddings.word_embeddings.weight"] for p in g["params"]))
    assert head_group["lr"] == pytest.approx(8 * emb_group["lr"])


def test_trainer_without_layer_decay_uses_one_scale(tmp_path):
    trainer = Trainer(tiny_bert(), config(), ToyClassification(n_eval=1), tmp_path / "run", progress=False)
    assert {g["lr_scale"] for g in trainer.optimizer.param_groups} == {1.0}
    trainer._train_step()
    assert all(g["lr"] == pytest.approx(trainer.current_lr) for g in trainer.optimizer.param_groups)


# ---------------------------------------------------------------------------------- top-k freezing
@pytest.mark.parametrize("k, trainable", [
    (0, {"top"}),
    (1, {"block1", "top"}),
    (2, {"block0", "block1", "top"}),
])
@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt], ids=["bert", "gpt"])
def test_freeze_below(make, k, trainable):
    model = make()
    freeze_below(model, k)
    assert trainable_groups(model) == trainable
    assert frozen_groups(model) == {"embeddings", "block0", "block1", "top"} - trainable
    unfreeze_all(model)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_below_head_only_is_exactly_the_head():
    model = tiny_bert()
    freeze_below(model, 0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("head.")}


def test_freeze_below_then_training_changes_only_trainable(tmp_path):
    model = tiny_bert()
    freeze_below(model, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, config(max_steps=3), ToyClassification(n_eval=1), tmp_path / "run", progress=False)
    for _ in range(3):
        trainer._train_step()
    for n, p in model.named_parameters():
        if group(n) in ("block1", "top"):
            if p.dim() >= 2:
                assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n


# ---------------------------------------------------------------------------------- gradual unfreezing
def test_gradual_unfreezing_as_trainer_callback(tmp_path):
    model = tiny_bert()
    unfreezing = GradualUnfreezing(model, every=3)
    assert trainable_groups(model) == {"top"}  # the head alone from the start
    trainer = Trainer(model, config(max_steps=10), ToyClassification(n_eval=1), tmp_path / "run", progress=False,
                      on_step=unfreezing)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    # after step s the top (s // 3) blocks are trainable; the embeddings stay frozen
    expected = {1: {"top"}, 2: {"top"}, 3: {"block1", "top"}, 4: {"block1", "top"}, 5: {"block1", "top"},
                6: {"block0", "block1", "top"}, 7: {"block0", "block1", "top"}}
    trained: set[str] = set()  # groups that were trainable during at least one step so far
    for step in range(1, 8):
        trained |= trainable_groups(model)  # what this step trains: set after the previous one
        previous = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer._train_step()
        assert trainer.step == step
        assert trainable_groups(model) == expected[step], step
        assert all(p.grad is None for p in model.parameters())
        for n, p in model.named_parameters():
            if group(n) not in trained:
                assert torch.equal(p, initial[n]), f"step {step}: frozen {n} changed"
            elif p.dim() >= 2:
                assert not torch.equal(p, previous[n]), f"step {step}: trainable {n} did not change"
    assert trained == {"block0", "block1", "top"}
    assert all(torch.equal(p, initial[n]) for n, p in model.named_parameters() if group(n) == "embeddings")


def test_gradual_unfreezing_reaches_everything_after_enough_steps():
    model = tiny_bert()
    unfreezing = GradualUnfreezing(model, every=2)

    class Step:
        step = 0

    t = Step()
    for s, groups in [(1, {"top"}), (2, {"block1", "top"}), (4, {"block0", "block1", "top"}),
                      (6, {"embeddings", "block0", "block1", "top"})]:
        t.step = s
        unfreezing(t)
        assert trainable_groups(model) == groups, s
