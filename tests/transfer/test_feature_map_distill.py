"""Feature-map distillation: a ViT's patch tokens learn a CNN teacher's last feature map (`FeatureMapDistiller`),
directly and through `dlforge train vit --teacher`."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.hub.weights import load_state_dict
from dlforge.models import ResNet, ResNetConfig, ViT, ViTConfig, load_pretrained
from dlforge.training.distill import feature_map_targets
from dlforge.training.images import train_image_model
from dlforge.transfer import FeatureMapDistiller

QUICK = {"max_steps": 6, "eval_interval": 3, "log_interval": 1, "batch_size": 16, "eval_images": 32}


def tiny_vit(seed: int = 0, **kw) -> ViT:
    torch.manual_seed(seed)
    settings = dict(image_size=16, patch_size=4, channels=1, hidden_size=32, n_layer=2, n_head=2,
                    intermediate_size=64, num_labels=3)
    return ViT(ViTConfig(**{**settings, **kw}))


def tiny_resnet(seed: int = 1, **kw) -> ResNet:
    torch.manual_seed(seed)
    settings = dict(block="basic", depths=[1, 1], widths=[8, 12], stem="small", image_size=16, channels=1,
                    num_labels=3)
    return ResNet(ResNetConfig(**{**settings, **kw})).eval()


def test_targets_are_the_layer_normalised_map_in_patch_order():
    fmap = torch.randn(2, 5, 3, 4)  # (B, C, rows, cols)
    targets = feature_map_targets(fmap, (3, 4))  # (B, 12, C)
    for r in range(3):
        for c in range(4):
            vector = fmap[:, :, r, c]
            expected = (vector - vector.mean(-1, keepdim=True)) / torch.sqrt(vector.var(-1, unbiased=False,
                                                                                         keepdim=True) + 1e-5)
            torch.testing.assert_close(targets[:, r * 4 + c], expected)
    pooled = feature_map_targets(torch.randn(2, 5, 8, 8), (4, 4))  # a finer map is averaged onto the grid
    assert pooled.shape == (2, 16, 5)


def test_loss_is_cross_entropy_plus_weighted_feature_regression():
    student, teacher = tiny_vit(), tiny_resnet()
    wrapper = FeatureMapDistiller(student, teacher, weight=0.5).train()
    images, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(3)
    out = wrapper(images, labels)
    torch.manual_seed(3)  # the same dropout masks (none here, but the formula must not depend on it)
    hidden = student.encode(images)
    logits = student.head(hidden[:, 0])
    targets = feature_map_targets(teacher.feature_map(images), (4, 4))
    hint = F.mse_loss(wrapper.projection(hidden[:, 1:]), targets)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels) + 0.5 * hint)
    torch.testing.assert_close(out.logs["hint_loss"], hint.detach())
    out.loss.backward()
    assert wrapper.projection.weight.grad.abs().sum() > 0
    assert student.embeddings.patch_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())  # frozen, and outside the optimiser's reach
    # validation scores the student alone, as a plain run's would be
    wrapper.eval()
    plain = student(images, labels)
    torch.testing.assert_close(wrapper(images, labels).loss, plain.loss)


def test_checkpoints_hold_the_student_and_the_projection_travels_apart():
    student, teacher = tiny_vit(), tiny_resnet()
    wrapper = FeatureMapDistiller(student, teacher)
    assert set(wrapper.state_dict()) == set(student.state_dict())
    names = {name for name, _ in wrapper.named_parameters()}
    assert {"projection.weight", "projection.bias"} <= names and not any("teacher" in n for n in names)
    state = wrapper.training_state_dict()
    assert set(state) == {"projection"} and state["projection"]["weight"].shape == (12, 32)
    other = FeatureMapDistiller(tiny_vit(), teacher)
    other.load_training_state_dict(state)
    assert torch.equal(other.projection.weight, wrapper.projection.weight)
    with pytest.raises(ValueError, match="projection"):
        other.load_training_state_dict({})
    wrapper.train()
    assert not teacher.training  # batch-norm statistics of the teacher never move


def test_wrong_pairs_are_refused():
    with pytest.raises(DlforgeError, match="must be a ViT classifier"):
        FeatureMapDistiller(tiny_resnet(), tiny_resnet())
    with pytest.raises(DlforgeError, match="must be a ViT classifier"):
        FeatureMapDistiller(tiny_vit(num_labels=0), tiny_resnet())
    with pytest.raises(DlforgeError, match="no feature map"):
        FeatureMapDistiller(tiny_vit(), tiny_vit())
    with pytest.raises(DlforgeError, match="1-channel images, the teacher 3-channel"):
        FeatureMapDistiller(tiny_vit(), tiny_resnet(channels=3))


def _rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_vit_with_a_teacher_learns_its_map_and_resumes_exactly(pattern_mnist, tmp_path):
    train_image_model("resnet", pattern_mnist, tmp_path / "teacher", preset="tiny", overrides=QUICK, progress=False)
    settings = {**QUICK, "max_steps": 40, "eval_interval": 20, "log_interval": 5, "patch_size": 7}
    train_image_model("vit", pattern_mnist, tmp_path / "straight", preset="tiny", overrides=settings,
                      teacher=tmp_path / "teacher", teacher_weight=2.0, progress=False)
    run = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert run["teacher"] == {"path": str((tmp_path / "teacher").resolve()), "weight": 2.0}
    hint = [float(row["hint_loss"]) for row in _rows(tmp_path / "straight") if row["hint_loss"]]
    assert len(hint) == 9 and sum(hint[-2:]) < 0.7 * sum(hint[:2])  # every 5 steps + step 14 (a third)
    model, _ = load_pretrained(tmp_path / "straight")  # the exported model is the plain ViT
    assert model.kind == "vit" and set(load_state_dict(tmp_path / "straight" / "checkpoints" / "best")) == set(
        model.state_dict())

    def stop_at_20(trainer, metrics):
        if metrics["step"] == 20:
            raise KeyboardInterrupt  # as Ctrl-C after the checkpoint of step 20

    with pytest.raises(KeyboardInterrupt):
        train_image_model("vit", pattern_mnist, tmp_path / "split", preset="tiny", overrides=settings,
                          teacher=tmp_path / "teacher", teacher_weight=2.0, on_eval=stop_at_20, progress=False)
    state = torch.load(tmp_path / "split" / "checkpoints" / "step-0000020" / "trainer_state.pt", weights_only=True)
    assert set(state["training_modules"]) == {"projection"}
    assert train_image_model("vit", None, tmp_path / "split", resume=True, progress=False)["step"] == 40
    a = load_state_dict(tmp_path / "straight" / "checkpoints" / "step-0000040")
    b = load_state_dict(tmp_path / "split" / "checkpoints" / "step-0000040")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the projection came back too, or the ViT would differ


def test_teacher_errors(pattern_mnist, tmp_path, cli):
    with pytest.raises(DlforgeError, match="not found"):
        train_image_model("vit", pattern_mnist, tmp_path / "v", preset="tiny", teacher=tmp_path / "none",
                          progress=False)
    assert not (tmp_path / "v" / "run.json").exists()  # nothing written: the same command may simply be rerun
    with pytest.raises(DlforgeError, match="is for `dlforge train vit`"):
        train_image_model("resnet", pattern_mnist, tmp_path / "r", preset="tiny", teacher=tmp_path, progress=False)
    status, _, err = cli("train", "vit", "--data", str(pattern_mnist), "--out", str(tmp_path / "w"),
                         "--preset", "tiny", "--teacher-weight", "2")
    assert status == 2 and "--teacher-weight needs --teacher" in err and "Traceback" not in err
