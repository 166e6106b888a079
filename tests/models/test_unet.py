"""The U-Net and the diffusion model family: shapes, conditioning, config round trip, loss, preview, training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dlforge.diffusion import DDIMScheduler, DPMSolverMultistepScheduler
from dlforge.errors import DlforgeError
from dlforge.models.unet import DiffusionConfig, DiffusionModel, UNet, UNetConfig


def tiny(**kwargs) -> dict:
    base = dict(image_size=28, channels=1, base_channels=8, channel_mults=(1, 2, 2), layers_per_block=1,
                attention_resolutions=(7, 8), attention_head_dim=8, dropout=0.0)  # 32 groups: 1 channel each
    return base | kwargs


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised output layers make a fresh U-Net output 0; give every weight a value."""
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return module


@pytest.mark.parametrize("size,mults,channels", [(28, (1, 2, 2), 1), (32, (1, 2, 2), 3), (8, (1, 2), 1)])
def test_unet_shapes(size, mults, channels):
    net = randomise(UNet(UNetConfig(**tiny(image_size=size, channel_mults=mults, channels=channels))))
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert net(x, 5).shape == x.shape  # a scalar timestep for the whole batch


def test_attention_at_low_resolution():
    net = UNet(UNetConfig(**tiny()))  # 28 -> 14 -> 7: attention only at 7×7 (down, mid and up)
    attention = [m for m in net.modules() if m.__class__.__name__ == "SelfAttention"]
    assert len(attention) == 1 + 1 + 2  # one down layer, the middle, two up layers at the 7×7 level


def test_fresh_unet_outputs_zero():
    net = UNet(UNetConfig(**tiny()))
    assert net(torch.randn(1, 1, 28, 28), 10).abs().max() == 0


def test_timestep_and_class_change_output():
    net = randomise(UNet(UNetConfig(**tiny(num_classes=3))))
    x = torch.randn(2, 1, 28, 28)
    out = net(x, 100, torch.tensor([0, 0]))
    assert not torch.allclose(out, net(x, 600, torch.tensor([0, 0])))
    assert not torch.allclose(out, net(x, 100, torch.tensor([1, 2])))
    # no labels = the null class (index num_classes)
    torch.testing.assert_close(net(x, 100), net(x, 100, torch.tensor([3, 3])))
    assert net.class_embed.num_embeddings == 4
    assert UNet(UNetConfig(**tiny())).class_embed is None


def test_config_round_trip_and_errors():
    config = DiffusionConfig(**tiny(num_classes=10))
    d = json.loads(json.dumps(dataclasses.asdict(config)))
    assert d["channel_mults"] == [1, 2, 2] and d["prediction_type"] == "v_prediction"
    assert DiffusionConfig.from_dict(d) == config
    model = DiffusionModel(config)
    clone = DiffusionModel(DiffusionConfig.from_dict(d))
    clone.load_state_dict(model.state_dict())
    with pytest.raises(DlforgeError, match="halved"):
        UNetConfig(**tiny(image_size=28, channel_mults=(1, 2, 2, 2)))
    with pytest.raises(DlforgeError, match="prediction_type"):
        DiffusionConfig(**tiny(prediction_type="sample"))
    with pytest.raises(DlforgeError, match="beta_schedule"):
        DiffusionConfig(**tiny(beta_schedule="quadratic"))
    with pytest.raises(DlforgeError, match="class_dropout"):
        DiffusionConfig(**tiny(class_dropout=1.5))
    with pytest.raises(DlforgeError, match="unknown DIFFUSION config keys: bogus"):
        DiffusionConfig.from_dict(d | {"bogus": 1})


def test_forward_loss_eval_is_deterministic():
    model = randomise(DiffusionModel(DiffusionConfig(**tiny(num_classes=2))))
    images, labels = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 0, 1])
    model.eval()
    state = torch.get_rng_state()
    a, b = model(images, labels), model(images, labels)
    assert torch.equal(torch.get_rng_state(), state)  # eval noise comes from a local generator
    assert a.loss.dim() == 0 and a.loss.item() > 0 and torch.equal(a.loss, b.loss)
    assert a.logs is None and DiffusionModel.log_names == () and DiffusionModel.kind == "diffusion"
    model.train()
    assert model(images, labels).loss.item() != model(images, labels).loss.item()  # fresh t and noise


def test_noise_scheduler_follows_the_config():
    model = DiffusionModel(DiffusionConfig(**tiny(num_train_timesteps=200, beta_schedule="linear")))
    sched = model.noise_scheduler("ddim", eta=0.5)
    assert isinstance(sched, DDIMScheduler) and sched.eta == 0.5
    assert sched.num_train_timesteps == 200 and sched.prediction_type == "v_prediction"
    assert isinstance(model.noise_scheduler("dpm++"), DPMSolverMultistepScheduler)


def test_preview_is_seeded_and_cycles_labels():
    model = randomise(DiffusionModel(DiffusionConfig(**tiny(image_size=8, channel_mults=(1, 2), num_classes=3))))
    a = model.preview(None, None, seed=1)
    assert a.shape == (33, 1, 8, 8) and a.min() >= -1 and a.max() <= 1  # 3·⌈32/3⌉ images
    assert torch.equal(a, model.preview(None, None, seed=1))
    assert model.training  # preview leaves the training mode as it was
    unconditional = randomise(DiffusionModel(DiffusionConfig(**tiny(image_size=8, channel_mults=(1, 2)))))
    assert unconditional.preview(None, None, seed=0).shape == (16, 1, 8, 8)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_training_lowers_the_loss(prediction):
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(**tiny(image_size=8, channel_mults=(1, 2), num_classes=2,
                                                  prediction_type=prediction, num_train_timesteps=100)))
    images = torch.zeros(8, 1, 8, 8)
    images[:, :, 2:6, 2:6] = 1.0  # one fixed picture: a bright square
    images = images * 2 - 1
    labels = torch.arange(8) % 2
    model.eval()
    before = model(images, labels).loss.item()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(images, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = model(images, labels).loss.item()
    assert after < 0.7 * before, (before, after)
