"""Autoencoder and VAE: shapes (mlp/conv at 28 and 32), the ELBO against a hand computation, eval determinism,
denoising noise, the latent tools (interpolation, scatter, likelihood bounds) and a short fit on a fixed batch."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dlforge.errors import DlforgeError
from dlforge.models.autoencoder import VAE, Autoencoder, AutoencoderConfig, build_autoencoder
from dlforge.models.autoencoder_tools import (
    importance_weighted_nll,
    interpolate,
    latent_scatter,
    negative_elbo,
    project_2d,
)


def tiny(**kw) -> AutoencoderConfig:
    base = dict(image_size=8, channels=1, latent_dim=4, hidden_sizes=[32, 16], base_channels=4)
    return AutoencoderConfig(**{**base, **kw})


def images(n=4, channels=1, size=8, seed=0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
@pytest.mark.parametrize("variational", [False, True])
def test_shapes(architecture, size, channels, variational):
    torch.manual_seed(0)
    cfg = AutoencoderConfig(image_size=size, channels=channels, architecture=architecture, latent_dim=6,
                            hidden_sizes=[32], base_channels=4, variational=variational)
    model = build_autoencoder(cfg)
    assert isinstance(model, VAE if variational else Autoencoder)
    assert model.kind == ("vae" if variational else "ae")
    x = images(3, channels, size)
    out = model(x)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert set(out.logs) == set(model.log_names)
    z = model.encode(x)
    assert z.shape == (3, 6)
    assert model.decode(z).shape == x.shape and model.reconstruct(x).shape == x.shape
    preview = model.preview(x, None, seed=1)
    assert preview.shape == ((9 if variational else 6), channels, size, size)
    assert preview.min() >= -1 and preview.max() <= 1
    torch.testing.assert_close(preview[0:6:2], x)  # originals interleaved with reconstructions
    torch.testing.assert_close(preview[1:6:2], model.reconstruct(x))
    if variational:
        torch.testing.assert_close(preview[6:], model.sample(3, seed=1))


def test_conv_halves_the_side_while_it_is_even_and_above_8():
    from dlforge.models.autoencoder import conv_plan

    assert conv_plan(28, 8) == ([8, 16, 32], 7)
    assert conv_plan(32, 8) == ([8, 16, 32], 8)
    assert conv_plan(64, 8) == ([8, 16, 32, 64], 8)
    assert conv_plan(256, 8)[0][-1] == 64  # channels stop doubling at 8 × base


def _hand_negative_elbo(model: VAE, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE loss written out from the formulas, with the eval-mode randomness (generator seeded 0)."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    target = x
    if c.binarize == "dynamic":
        target = torch.bernoulli((x + 1) / 2, generator=g) * 2 - 1
    h = model.encoder.net(target.flatten(1))
    mu, logvar = h[:, : c.latent_dim], h[:, c.latent_dim:]
    eps = torch.randn(mu.shape, generator=g)
    z = mu + torch.exp(logvar / 2) * eps
    out = model.decoder.net(z)  # (B, D)
    t = target.flatten(1)
    if c.likelihood == "bernoulli":
        p, b = torch.sigmoid(out), (t + 1) / 2
        recon = -(b * torch.log(p) + (1 - b) * torch.log(1 - p)).sum(1)
    else:
        var = torch.exp(2 * model.log_sigma)
        recon = (0.5 * (t - out) ** 2 / var + 0.5 * torch.log(2 * math.pi * var)).sum(1)
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1)
    return recon, (recon + beta * kl).mean()


@pytest.mark.parametrize("likelihood,binarize", [("gaussian", "none"), ("bernoulli", "dynamic"),
                                                 ("bernoulli", "none")])
def test_vae_loss_is_reconstruction_plus_beta_kl_by_hand(likelihood, binarize):
    torch.manual_seed(0)
    beta = 2.5
    model = VAE(tiny(image_size=2, hidden_sizes=[3], latent_dim=2, likelihood=likelihood, binarize=binarize,
                     beta=beta)).eval()
    if likelihood == "gaussian":
        with torch.no_grad():
            model.log_sigma.fill_(-0.7)
    x = images(5, size=2)
    out = model(x)
    recon, loss = _hand_negative_elbo(model, x, beta)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.logs["recon"], recon.mean())
    torch.testing.assert_close(out.loss, out.logs["recon"] + beta * out.logs["kl"])


def test_kl_of_a_standard_normal_posterior_is_zero():
    assert VAE.kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0
    assert (VAE.kl(torch.randn(3, 5), torch.randn(3, 5)) > 0).all()
    model = VAE(tiny()).eval()
    last = model.encoder.net[-1]
    with torch.no_grad():  # encoder output 0 -> μ = 0, log σ² = 0: q(z|x) = N(0, I)
        last.weight.zero_()
        last.bias.zero_()
    assert model(images()).logs["kl"] == 0


@pytest.mark.parametrize("variational", [False, True])
def test_eval_loss_is_deterministic_and_leaves_the_global_rng_alone(variational):
    model = build_autoencoder(tiny(variational=variational, likelihood="bernoulli", binarize="dynamic",
                                   noise="gaussian"))
    x = images(6)
    model.eval()
    state = torch.get_rng_state()
    first, second = model(x).loss, model(x).loss
    assert torch.equal(torch.get_rng_state(), state)
    assert first == second
    model.train()
    assert model(x).loss != model(x).loss  # training draws fresh binarisations (and noise, posterior samples)


def test_dynamic_binarisation_trains_on_binary_pixels():
    model = Autoencoder(tiny(likelihood="bernoulli", binarize="dynamic"))
    x = images(16)
    for training in (True, False):
        model.train(training)
        x_in, target = model.prepare(x, model._generator(x.device))
        assert set(target.unique().tolist()) <= {-1.0, 1.0}
        torch.testing.assert_close(x_in, target)
    p = (x + 1) / 2  # pixels far from 0/1 flip between samples; the mean tracks the pixel
    mean = torch.stack([(model.prepare(x, None)[1] + 1) / 2 for _ in range(200)]).mean(0)
    assert (mean - p).abs().max() < 0.15


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_denoising_noise_is_applied_in_training_only(noise):
    model = Autoencoder(tiny(noise=noise, noise_level=0.5, channels=3))
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = images(8, channels=3)
    model.train()
    model(x)
    model.eval()
    model(x)
    noisy, clean = seen
    torch.testing.assert_close(clean, x)
    assert not torch.equal(noisy, x) and noisy.min() >= -1 and noisy.max() <= 1
    if noise == "masking":
        masked = noisy != x
        masked_pixels = (noisy == -1).all(1)  # (B, H, W): a masked pixel is -1 in every channel
        assert (masked.any(1) <= masked_pixels).all()
        assert 0.35 < masked_pixels.float().mean() < 0.65


def test_interpolation_ends_are_the_reconstructions():
    torch.manual_seed(0)
    for model in (Autoencoder(tiny()), VAE(tiny(architecture="conv"))):
        x = images(2)
        path = interpolate(model, x[0], x[1], steps=5)
        assert path.shape == (5, 1, 8, 8)
        torch.testing.assert_close(path[0], model.reconstruct(x[:1])[0])
        torch.testing.assert_close(path[-1], model.reconstruct(x[1:])[0])
    with pytest.raises(DlforgeError, match="at least 2 steps"):
        interpolate(model, x[0], x[1], steps=1)


@pytest.mark.parametrize("latent_dim,labelled", [(8, True), (2, False)])
def test_latent_scatter_writes_a_png(tmp_path, latent_dim, labelled):
    torch.manual_seed(0)
    model = VAE(tiny(latent_dim=latent_dim))
    labels = torch.arange(40) % 4 if labelled else None
    path = latent_scatter(model, images(40), labels, tmp_path / "plots" / "latent.png", class_names=list("abcd"))
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > 100
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["latent.png"]  # no temporary left behind


def test_pca_projection_keeps_the_two_widest_directions():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 5, generator=g) * torch.tensor([0.1, 5.0, 0.1, 2.0, 0.1])
    p = project_2d(z)
    assert p.shape == (500, 2)
    assert p[:, 0].std() == pytest.approx(5.0, rel=0.1) and p[:, 1].std() == pytest.approx(2.0, rel=0.1)
    torch.testing.assert_close(project_2d(z), p)  # deterministic, sign included


def test_negative_elbo_matches_eval_loss_and_bounds_order():
    torch.manual_seed(0)
    model = VAE(tiny(likelihood="bernoulli", binarize="dynamic")).eval()
    x = images(10)
    nelbo = negative_elbo(model, x)
    assert nelbo.shape == (10,)
    torch.testing.assert_close(nelbo.mean(), model(x).loss)  # β = 1: the same estimate as the eval loss
    torch.testing.assert_close(negative_elbo(model, x, batch_size=10), nelbo)
    many = negative_elbo(model, x, k=64)
    iwae = importance_weighted_nll(model, x, k=64)
    assert iwae.shape == (10,) and torch.isfinite(iwae).all()
    assert iwae.mean() < many.mean()  # the importance-weighted bound is tighter than the ELBO
    with pytest.raises(DlforgeError, match="needs a VAE"):
        negative_elbo(Autoencoder(tiny()), x)


def test_config_round_trips_through_json_and_rebuilds_the_same_model():
    torch.manual_seed(0)
    model = VAE(tiny(hidden_sizes=(16, 8), likelihood="gaussian"))
    assert model.config.variational is True and model.config.hidden_sizes == [16, 8]
    d = json.loads(json.dumps(asdict(model.config)))
    again = VAE(AutoencoderConfig.from_dict(d))
    again.load_state_dict(model.state_dict())
    x = images(3)
    torch.testing.assert_close(again.eval()(x).loss, model.eval()(x).loss)
    assert not hasattr(VAE(tiny(likelihood="bernoulli")), "log_sigma")


def test_bad_settings_are_one_line_errors():
    with pytest.raises(DlforgeError, match="architecture must be one of"):
        tiny(architecture="rnn")
    with pytest.raises(DlforgeError, match="needs likelihood='bernoulli'"):
        tiny(binarize="dynamic")
    with pytest.raises(DlforgeError, match="noise_level"):
        tiny(noise="masking", noise_level=1.0)
    with pytest.raises(DlforgeError, match="unknown AUTOENCODER config keys: depth"):
        AutoencoderConfig.from_dict({"depth": 3})
    with pytest.raises(DlforgeError, match="build VAE"):
        Autoencoder(tiny(variational=True))
    with pytest.raises(DlforgeError, match="no prior"):
        Autoencoder(tiny()).sample(2)


def test_bf16_autocast_forward_gives_an_fp32_loss():
    model = VAE(tiny(architecture="conv", likelihood="bernoulli"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_a_tiny_autoencoder_learns_a_fixed_batch(architecture):
    torch.manual_seed(0)
    model = Autoencoder(tiny(architecture=architecture, latent_dim=8))
    x = images(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(x).loss.item()
    for _ in range(50):
        loss = model(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert F.mse_loss(model.eval().reconstruct(x), x).item() < 0.5 * first
