"""Tests for dlforge.models.gan: shapes, conditioning, init, the G/D gradient separation, determinism."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.models.gan import DCGAN_TRAIN_SETTINGS, GAN, GANConfig, up_stages
from dlforge.training.optim import make_adamw


def tiny_gan(seed: int = 0, **overrides) -> GAN:
    base = dict(image_size=28, channels=1, latent_dim=8, g_width=4, d_width=4, label_dim=4)
    base.update(overrides)
    torch.manual_seed(seed)
    return GAN(GANConfig(**base))


def batch(n: int, channels: int = 1, size: int = 28, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1, torch.randint(0, 3, (n,), generator=g)


# ----------------------------------------------------------------------------- config


def test_config_and_stages():
    assert up_stages(28) == (7, 2) and up_stages(32) == (4, 3) and up_stages(64) == (4, 4) and up_stages(8) == (4, 1)
    for bad in (30, 5, 100 * 3 + 1, 2):
        with pytest.raises(DlforgeError, match="image_size"):
            GANConfig(image_size=bad)
    with pytest.raises(DlforgeError, match="label_smoothing"):
        GANConfig(label_smoothing=0.6)
    with pytest.raises(DlforgeError, match="unknown GAN config keys: bogus"):
        GANConfig.from_dict({"bogus": 1})
    assert GAN.kind == "gan" and GAN.config_class is GANConfig
    assert GAN.log_names == ("d_loss", "g_loss", "d_real", "d_fake")
    assert DCGAN_TRAIN_SETTINGS == dict(lr=2e-4, beta1=0.5, beta2=0.999, weight_decay=0.0, batch_size=128,
                                        warmup_steps=0, decay="constant", grad_clip=None)


# ----------------------------------------------------------------------------- shapes / architecture


@pytest.mark.parametrize("size,channels,stages", [(28, 1, 2), (32, 3, 3), (64, 3, 4)])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes(size, channels, stages, num_classes):
    model = tiny_gan(image_size=size, channels=channels, num_classes=num_classes)
    images, labels = batch(4, channels, size)
    out = model(images, labels)
    assert out.loss.dim() == 0 and set(out.logs) == set(GAN.log_names)
    assert torch.isclose(out.loss, out.logs["d_loss"] + out.logs["g_loss"])
    assert 0 < out.logs["d_real"] < 1 and 0 < out.logs["d_fake"] < 1
    z = model.sample_latent(4)
    fake = model.generator(z, labels if num_classes else None)
    assert fake.shape == (4, channels, size, size) and fake.abs().max() <= 1
    assert model.discriminator(fake, labels if num_classes else None).shape == (4,)
    # one transposed conv per up-sampling stage plus the projection from z; D mirrors it
    n_convt = sum(isinstance(m, nn.ConvTranspose2d) for m in model.generator.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.discriminator.modules())
    assert n_convt == stages + 1 and n_conv == stages + 1
    # D: no BatchNorm right after the first conv; no pooling anywhere
    assert isinstance(model.discriminator.features[1], nn.LeakyReLU)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())


def test_dcgan_64_widths():
    """At 64×64 with the default widths the nets are DCGAN's: G 512-256-128-64-3, D 64-128-256-512-1."""
    model = GAN(GANConfig(image_size=64, channels=3))
    g = [m.out_channels for m in model.generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    d = [m.out_channels for m in model.discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert g == [512, 256, 128, 64, 3] and d == [64, 128, 256, 512, 1]


def test_conditional():
    model = tiny_gan(num_classes=3).eval()
    assert model.generator.label_embedding.num_embeddings == 3 and model.discriminator.projection is not None
    z = model.sample_latent(1).repeat(3, 1)
    fake = model.generator(z, torch.tensor([0, 1, 2]))  # same z, three classes
    assert (fake[1] - fake[0]).abs().max() > 1e-6 and (fake[2] - fake[1]).abs().max() > 1e-6  # exactly 0 if ignored
    images, _ = batch(2)
    d = model.discriminator(images.repeat(2, 1, 1, 1), torch.tensor([0, 1, 0, 1]))
    assert (d[0] - d[1]).abs() > 1e-6  # and D's verdict
    with pytest.raises(DlforgeError, match="conditional"):
        model(images)
    with pytest.raises(DlforgeError, match="unconditional"):
        tiny_gan().generate(2, labels=[0, 1])
    with pytest.raises(DlforgeError, match="shape"):
        model(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))


def test_spectral_norm():
    model = tiny_gan(spectral_norm=True, num_classes=3)
    d = model.discriminator
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    assert torch.nn.utils.parametrize.is_parametrized(d.projection, "weight")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.generator.modules())  # G keeps its BN
    for _ in range(20):  # power iterations converge in training-mode forwards
        d(torch.randn(2, 1, 28, 28), torch.tensor([0, 2]))
    w = convs[1].weight.detach().flatten(1)
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1.0) < 0.05
    # rebuilt from its config and state dict (what a checkpoint holds) it gives the same outputs
    clone = GAN(GANConfig.from_dict(vars(model.config).copy()))
    clone.load_state_dict(model.state_dict())
    images, labels = batch(3)
    torch.testing.assert_close(clone.eval()(images, labels).loss, model.eval()(images, labels).loss)


def test_init_statistics():
    model = GAN(GANConfig(image_size=64, channels=3, num_classes=10))
    convs = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(convs.mean().item()) < 1e-3 and abs(convs.std().item() - 0.02) < 1e-3
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    gains = torch.cat([m.weight for m in bn])
    assert abs(gains.mean().item() - 1.0) < 3e-3 and abs(gains.std().item() - 0.02) < 3e-3
    assert all(m.bias.abs().max() == 0 for m in bn)
    assert abs(model.discriminator.projection.weight.std().item() - 0.02) < 2e-3
    assert abs(model.generator.label_embedding.weight.std().item() - 0.1) < 0.02


# ----------------------------------------------------------------------------- losses and gradients


def param_grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in module.named_parameters()}


@pytest.mark.parametrize("overrides", [{}, {"num_classes": 3}, {"spectral_norm": True, "num_classes": 3},
                                       {"label_smoothing": 0.1}])
def test_gradient_separation(overrides):
    """d_loss + g_loss gives D exactly ∇_D d_loss and G exactly ∇_G g_loss, with d_loss and g_loss
    computed the textbook way on an untouched copy of the model."""
    model = tiny_gan(**overrides)
    reference = copy.deepcopy(model)
    images, labels = batch(6)
    labels = labels if model.conditional else None

    torch.manual_seed(7)
    out = model(images, labels)
    out.loss.backward()

    torch.manual_seed(7)
    z = reference.sample_latent(6)
    fake = reference.generator(z, labels)
    real_logits = reference.discriminator(images, labels)
    fake_logits = reference.discriminator(fake.detach(), labels)
    smooth = model.config.label_smoothing
    d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.full((6,), 1.0 - smooth))
              + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros(6)))
    g_loss = F.binary_cross_entropy_with_logits(reference.discriminator(fake, labels), torch.ones(6))
    torch.testing.assert_close(out.logs["d_loss"], d_loss.detach())
    torch.testing.assert_close(out.logs["g_loss"], g_loss.detach())
    torch.testing.assert_close(out.logs["d_real"], torch.sigmoid(real_logits).mean().detach())

    d_params = list(reference.discriminator.parameters())
    g_params = list(reference.generator.parameters())
    expected_d = torch.autograd.grad(d_loss, d_params, retain_graph=True)
    expected_g = torch.autograd.grad(g_loss, g_params)
    for p, expected in zip(model.discriminator.parameters(), expected_d):
        torch.testing.assert_close(p.grad, expected)
    for p, expected in zip(model.generator.parameters(), expected_g):
        torch.testing.assert_close(p.grad, expected)
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())  # every parameter learns from something


def test_eval_forward_is_deterministic_and_keeps_global_rng():
    model = tiny_gan(num_classes=3).eval()
    images, labels = batch(4)
    state = torch.get_rng_state()
    a = model(images, labels)
    b = model(images, labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.loss.item() == b.loss.item() and a.logs["d_fake"].item() == b.logs["d_fake"].item()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        c, d = model(images, labels), model(images, labels)
    assert torch.isfinite(c.loss) and c.loss.item() == d.loss.item()


def test_generate_and_preview():
    model = tiny_gan(num_classes=3)
    model.train()
    a = model.generate(7, seed=3, batch_size=2)
    b = model.generate(7, seed=3)
    assert model.training and model.generator.training  # restored after sampling in eval mode
    assert a.shape == (7, 1, 28, 28) and a.dtype == torch.float32 and a.abs().max() <= 1
    torch.testing.assert_close(a, b)
    assert (model.generate(7, seed=4) - a).abs().max() > 1e-4
    # labels default to 0, 1, 2, 0, …: the same as passing them
    torch.testing.assert_close(model.generate(7, labels=[0, 1, 2, 0, 1, 2, 0], seed=3), a)
    preview = model.preview(None, None, seed=5)
    assert preview.shape == (model.preview_count, 1, 28, 28) and model.preview_count % 3 == 0
    assert model.preview_nrow == 3 and tiny_gan().preview_count == 64
    torch.testing.assert_close(preview, model.preview(None, None, seed=5))


def test_training_steps_with_one_optimizer():
    """A few simultaneous Adam steps with the DCGAN settings: D learns to tell this fixed batch from G's samples."""
    model = tiny_gan(d_width=8, g_width=8)
    s = DCGAN_TRAIN_SETTINGS
    optimizer = make_adamw(model, 1e-3, s["weight_decay"], (s["beta1"], s["beta2"]))
    images = torch.zeros(16, 1, 28, 28)
    images[:, :, 8:20, 8:20] = 1.0  # a bright square on black
    images = images * 2 - 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    first = None
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first = first or {k: float(v) for k, v in out.logs.items()}
    last = {k: float(v) for k, v in out.logs.items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert last["d_loss"] < first["d_loss"] and last["d_real"] > last["d_fake"]


def per_class_spread(model: GAN, classes: int, n: int = 640) -> float:
    """Mean over classes of the per-pixel std over z of G's samples: about 0 when G ignores z."""
    labels = torch.arange(n) % classes
    with torch.no_grad():
        images = model.generator(torch.randn(n, model.config.latent_dim), labels)  # (n, C, H, W)
    return sum(images[labels == k].std(0).mean().item() for k in range(classes)) / classes


@pytest.mark.parametrize("seed", [0, 1])
def test_conditional_samples_vary_with_z_after_training(seed):
    """600 Adam steps on the real 8×8 digits: each class must still get different images for different z.
    With class codes initialised as loudly as z, N(0, 1), G collapsed to one image per class (spread ~0.03)."""
    from dlforge.data.images import load_sklearn_digits, to_signed_unit

    digits = load_sklearn_digits("train")
    images, labels = to_signed_unit(digits.images), digits.labels
    model = tiny_gan(seed, image_size=8, num_classes=10, latent_dim=16, g_width=32, d_width=32, label_dim=16)
    s = DCGAN_TRAIN_SETTINGS
    optimizer = make_adamw(model, s["lr"], s["weight_decay"], (s["beta1"], s["beta2"]))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(600):
        pick = torch.randint(0, len(images), (64,), generator=generator)
        model(images[pick], labels[pick]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert per_class_spread(model, 10) > 0.15
