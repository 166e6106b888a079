"""Knowledge distillation: the loss formula, the Distiller wrapper and a student trained by the Trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toy_task import ToyClassification

from dlforge.models import Bert, BertConfig, load_pretrained
from dlforge.training import TrainConfig, Trainer
from dlforge.transfer import Distiller, distillation_loss


def tiny_bert(seed: int = 0, n_layer: int = 2) -> Bert:
    torch.manual_seed(seed)
    return Bert(BertConfig(vocab_size=50, hidden_size=32, n_layer=n_layer, n_head=4, intermediate_size=64,
                           max_position=32, task="sequence-classification", num_labels=2, dropout=0.0))




def config(**kw) -> TrainConfig:
    base = dict(max_steps=60, lr=1e-2, warmup_steps=1, eval_interval=60, log_interval=10, precision="fp32",
                batch_size=16, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def manual_loss(s, t, y, T, alpha):
    """Hinton et al. by hand, in float64: α·T²·mean_i KL(p_t‖p_s) + (1−α)·mean_i CE(s_i, y_i)."""
    s, t = s.double(), t.double()
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    ce = -torch.log_softmax(s, -1)[torch.arange(len(y)), y].mean()
    return alpha * kl + (1 - alpha) * ce, kl


# ---------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (2.0, 0.3), (4.0, 0.9)])
def test_distillation_loss_matches_formula(T, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g) * 2, torch.randn(6, 5, generator=g) * 2
    y = torch.randint(0, 5, (6,), generator=g)
    expected, kl = manual_loss(s, t, y, T, alpha)
    assert distillation_loss(s, t, y, temperature=T, alpha=alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    # no labels: the soft term alone (with its T² factor)
    assert distillation_loss(s, t, None, temperature=T, alpha=alpha).item() == pytest.approx(kl.item(), rel=1e-5)


def test_alpha_one_is_soft_term_only_and_alpha_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    y = torch.randint(0, 4, (7,), generator=g)
    soft = distillation_loss(s, t, None, temperature=3.0)
    assert distillation_loss(s, t, y, temperature=3.0, alpha=1.0).item() == pytest.approx(soft.item(), rel=1e-6)
    assert distillation_loss(s, t, y, temperature=3.0, alpha=0.0).item() == pytest.approx(
        F.cross_entropy(s, y).item(), rel=1e-6)


def test_soft_gradient_is_T_times_probability_difference():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    T = 2.5
    distillation_loss(s, t, None, temperature=T).backward()
    expected = T * (torch.softmax(s.detach().float() / T, -1) - torch.softmax(t.float() / T, -1)) / 5
    torch.testing.assert_close(s.grad.float(), expected, atol=1e-6, rtol=1e-5)


def test_ignored_positions_are_excluded():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)  # per-token logits (B, T, C)
    y = torch.randint(0, 6, (2, 5), generator=g)
    y[0, 1] = y[1, 3] = y[1, 4] = -100
    keep = y != -100
    loss = distillation_loss(s, t, y, temperature=2.0, alpha=0.4)
    expected, _ = manual_loss(s[keep], t[keep], y[keep], 2.0, 0.4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # whatever the logits at ignored positions are, the loss is the same
    s2, t2 = s.clone(), t.clone()
    s2[~keep] += 10 * torch.randn(int((~keep).sum()), 6, generator=g)
    t2[~keep] -= 10 * torch.randn(int((~keep).sum()), 6, generator=g)
    assert distillation_loss(s2, t2, y, temperature=2.0, alpha=0.4).item() == pytest.approx(loss.item(), rel=1e-6)
    # and it is not the loss over all positions
    expected_all, _ = manual_loss(s.flatten(0, 1), t.flatten(0, 1), y.clamp(min=0).flatten(), 2.0, 0.4)
    assert abs(loss.item() - expected_all.item()) > 1e-3


def test_custom_ignore_index():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 2, 7, 1, 7, 0])
    keep = y != 7
    expected, _ = manual_loss(s[keep], t[keep], y[keep], 2.0, 0.5)
    assert distillation_loss(s, t, y, ignore_index=7).item() == pytest.approx(expected.item(), rel=1e-5)


def test_student_equal_to_teacher_gives_zero_soft_loss():
    logits = torch.randn(4, 3, 10, generator=torch.Generator().manual_seed(5)) * 3
    assert distillation_loss(logits, logits.clone(), None, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.randint(0, 10, (4, 3), generator=torch.Generator().manual_seed(6))
    assert distillation_loss(logits, logits.clone(), labels, temperature=2.0, alpha=1.0).item() == pytest.approx(
        0.0, abs=1e-6)


def test_loss_in_half_precision_is_computed_in_float32():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    loss = distillation_loss(s.bfloat16(), t.bfloat16(), y)
    assert loss.dtype == torch.float32
    expected, _ = manual_loss(s.bfloat16().float(), t.bfloat16().float(), y, 2.0, 0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------------------------- the Distiller
def test_distiller_holds_only_student_parameters():
    student, teacher = tiny_bert(1, n_layer=1), tiny_bert(0, n_layer=2)
    distiller = Distiller(student, teacher)
    assert {id(p) for p in distiller.parameters()} == {id(p) for p in student.parameters()}
    # checkpoints hold the student under its own names (a run folder loads as the student)
    assert list(distiller.state_dict()) == list(student.state_dict())
    assert not any(k.startswith("layers.1.") for k in distiller.state_dict())  # the teacher's 2nd layer
    assert distiller.kind == "bert" and distiller.config is student.config
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    distiller.train()
    assert student.training and not teacher.training


def test_distiller_forward_is_the_distillation_loss_and_teacher_gets_no_gradient():
    student, teacher = tiny_bert(1, n_layer=1), tiny_bert(0, n_layer=2)
    with torch.no_grad():  # a teacher with non-trivial predictions
        teacher.head.out_proj.weight.normal_(0, 1.0)
    distiller = Distiller(student, teacher, temperature=3.0, alpha=0.25)
    batch = ToyClassification().make(11)
    out = distiller(**batch)
    with torch.no_grad():
        s = student(batch["input_ids"]).logits
        t = teacher(batch["input_ids"]).logits
    torch.testing.assert_close(out.logits, s)
    expected = distillation_loss(s, t, batch["labels"], temperature=3.0, alpha=0.25)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    expected_manual, _ = manual_loss(s, t, batch["labels"], 3.0, 0.25)
    assert out.loss.item() == pytest.approx(expected_manual.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.head.parameters())


def teacher_trained_on_toy_task(tmp_path) -> Bert:
    teacher = tiny_bert(0, n_layer=2)
    Trainer(teacher, config(max_steps=40), ToyClassification(seed=1), tmp_path / "teacher", progress=False).fit()
    return teacher.eval()


@torch.no_grad()
def agreement(student, teacher, batch) -> float:
    student.eval()
    return (student(batch["input_ids"]).logits.argmax(-1) == teacher(batch["input_ids"]).logits.argmax(-1)) \
        .float().mean().item()


def test_distilling_a_student_with_the_trainer(tmp_path):
    teacher = teacher_trained_on_toy_task(tmp_path)
    held_out = ToyClassification().make(999, n=256)
    teacher_accuracy = (teacher(held_out["input_ids"]).logits.argmax(-1) == held_out["labels"]).float().mean()
    assert teacher_accuracy > 0.95  # the teacher knows the task
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    student = tiny_bert(1, n_layer=1)
    agreement_before = agreement(student, teacher, held_out)
    # soft targets alone (alpha = 1): whatever the student learns comes from the teacher
    distiller = Distiller(student, teacher, temperature=2.0, alpha=1.0)
    trainer = Trainer(distiller, config(max_steps=60), ToyClassification(seed=2), tmp_path / "student",
                      progress=False)
    loss_before = trainer.evaluate()
    result = trainer.fit()
    agreement_after = agreement(student, teacher, held_out)
    train_losses = [r["train_loss"] for r in trainer.log.rows if r["train_loss"] is not None]
    # measured (3 student seeds x 3 data seeds): eval loss 1.77 -> <= 0.0015, train loss (10-step windows)
    # 1.4-1.8 -> <= 0.003, agreement 0.49-0.51 -> 1.0
    assert result["val_loss"] < 0.05 * loss_before, (loss_before, result)
    assert train_losses[-1] < 0.1 * train_losses[0], train_losses
    assert agreement_before < 0.8
    assert agreement_after > 0.95, (agreement_before, agreement_after)
    # the teacher is untouched: same weights, no gradients, still in eval mode
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_distillation_run_folder_loads_as_the_student(tmp_path):
    student, teacher = tiny_bert(1, n_layer=1), tiny_bert(0, n_layer=2)
    Trainer(Distiller(student, teacher), config(max_steps=2, eval_interval=2), ToyClassification(),
            tmp_path / "run", progress=False).fit()
    loaded, _ = load_pretrained(tmp_path / "run")
    assert isinstance(loaded, Bert) and loaded.config.n_layer == 1
    for k, v in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_distiller_trains_on_the_trainers_device_with_a_cpu_built_teacher(device, tmp_path):
    student, teacher = tiny_bert(1, n_layer=1), tiny_bert(0, n_layer=2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    result = Trainer(Distiller(student, teacher), config(max_steps=4, eval_interval=4, device=device),
                     ToyClassification(), tmp_path / "run", progress=False).fit()
    # the teacher went to the trainer's device with the student and ran there, frozen
    assert {p.device.type for p in (*student.parameters(), *teacher.parameters())} == {device}
    assert all(torch.equal(v.cpu(), teacher_before[k]) for k, v in teacher.state_dict().items())
    assert result["step"] == 4 and 0 < result["val_loss"] < 10
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v.cpu(), student_before[k])]
    assert "head.out_proj.weight" in changed and "layers.0.attn.c_attn.weight" in changed
    loaded, _ = load_pretrained(tmp_path / "run")  # the run folder holds the trained student
    assert all(torch.equal(loaded.state_dict()[k], v.cpu()) for k, v in student.state_dict().items())


def test_distiller_moves_the_teacher_with_it():
    student, teacher = tiny_bert(1, n_layer=1), tiny_bert(0, n_layer=2)
    Distiller(student, teacher).to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64
    assert next(student.parameters()).dtype == torch.float64
