"""Sampling loops on a tiny random diffusion model: shapes, seeding, guidance, img2img, inpaint, outpaint, strip."""

from __future__ import annotations

import pytest
import torch

from dlforge.diffusion import DDIMScheduler, generate, img2img, inpaint, make_scheduler, outpaint, process_strip
from dlforge.errors import DlforgeError
from dlforge.models.unet import DiffusionConfig, DiffusionModel

SIZE = 8


def make_model(num_classes=0, prediction="v_prediction"):
    torch.manual_seed(0)
    model = DiffusionModel(DiffusionConfig(image_size=SIZE, channels=1, num_classes=num_classes, base_channels=8,
                                           channel_mults=[1, 2], layers_per_block=1, attention_resolutions=[4],
                                           attention_head_dim=8, norm_groups=4, dropout=0.1,
                                           num_train_timesteps=100, prediction_type=prediction))
    for p in model.parameters():  # a fresh U-Net outputs 0 (zero-initialised output convs); make it say something
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def conditional():
    return make_model(num_classes=3, prediction="epsilon")


def images(n=2, seed=0):
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Oracle(torch.nn.Module):
    """A perfect denoiser for data with one picture per class: it knows x_0, so every sampler must end on it."""

    def __init__(self, pictures, prediction):
        super().__init__()
        self.config = DiffusionConfig(image_size=SIZE, channels=1, num_classes=len(pictures),
                                      prediction_type=prediction, beta_schedule="cosine", channel_mults=[1, 2])
        self.pictures = torch.nn.Parameter(pictures, requires_grad=False)  # (K, 1, H, W)
        self.schedule = make_scheduler("ddpm", self.config)

    def predict(self, x, t, labels):
        x0 = self.pictures[labels]
        eps = (x - self.schedule.add_noise(x0, torch.zeros_like(x0), t)) / self.schedule.add_noise(
            torch.zeros_like(x0), torch.ones_like(x0), t)  # (x_t − √ᾱ x_0) / √(1 − ᾱ)
        return eps if self.config.prediction_type == "epsilon" else self.schedule.get_velocity(x0, eps, t)


@pytest.mark.parametrize("scheduler,prediction", [(s, p) for s in ("ddpm", "ddim", "dpm++")
                                                  for p in ("epsilon", "v_prediction")])
def test_samplers_land_on_the_data_of_a_perfect_denoiser(scheduler, prediction):
    pictures = images(3, seed=5)
    oracle = Oracle(pictures, prediction)
    out = generate(oracle, 6, steps=8, scheduler=scheduler, labels=[0, 1, 2, 2, 1, 0], seed=0)
    torch.testing.assert_close(out, pictures[[0, 1, 2, 2, 1, 0]], atol=1e-5, rtol=0)
    again = img2img(oracle, images(3, seed=6), strength=0.5, steps=8, scheduler=scheduler, labels=[0, 1, 2])
    torch.testing.assert_close(again, pictures, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm++"])
def test_generate_shapes_and_seeds(model, scheduler):
    a = generate(model, 3, steps=5, scheduler=scheduler, seed=0)
    assert a.shape == (3, 1, SIZE, SIZE) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, generate(model, 3, steps=5, scheduler=scheduler, seed=0))
    assert not torch.allclose(a, generate(model, 3, steps=5, scheduler=scheduler, seed=1))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(a, generate(model, 3, steps=5, scheduler=scheduler, seed=gen))  # a Generator works too


def test_generate_in_chunks_keeps_training_mode(model):
    model.train()
    out = generate(model, 5, steps=3, seed=0, batch_size=2)
    assert out.shape == (5, 1, SIZE, SIZE) and model.training
    # the starting noise is drawn for all n at once, so deterministic DDIM gives the same images in any chunking
    torch.testing.assert_close(out, generate(model, 5, steps=3, seed=0, batch_size=5), atol=1e-5, rtol=0)


def test_ddim_eta_and_scheduler_object(model):
    a = generate(model, 2, steps=4, scheduler="ddim", seed=0)
    b = generate(model, 2, steps=4, scheduler="ddim", eta=1.0, seed=0)
    assert not torch.allclose(a, b)
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="cosine", prediction_type="v_prediction",
                          clip_sample=False)  # as make_scheduler builds DDIM for a model
    torch.testing.assert_close(a, generate(model, 2, steps=4, scheduler=sched, seed=0))
    with pytest.raises(DlforgeError, match="the scheduler has 1000 timesteps"):
        generate(model, 1, steps=2, scheduler=DDIMScheduler(prediction_type="v_prediction"))
    with pytest.raises(DlforgeError, match="eta applies to the ddim"):
        generate(model, 1, steps=2, scheduler=model.noise_scheduler("dpm++"), eta=1.0)


def test_guidance_and_labels(conditional):
    labels = torch.tensor([0, 1, 2])
    guided = generate(conditional, 3, steps=4, labels=labels, guidance_scale=3.0, seed=0)
    plain = generate(conditional, 3, steps=4, labels=labels, seed=0)
    null = generate(conditional, 3, steps=4, seed=0)
    assert guided.shape == (3, 1, SIZE, SIZE)
    assert not torch.allclose(guided, plain) and not torch.allclose(plain, null)
    # one label for all images
    torch.testing.assert_close(generate(conditional, 2, steps=3, labels=1, seed=0),
                               generate(conditional, 2, steps=3, labels=[1, 1], seed=0))


def test_guidance_errors(model, conditional):
    with pytest.raises(DlforgeError, match="unconditional"):
        generate(model, 2, steps=2, labels=[0, 1], guidance_scale=2.0)
    with pytest.raises(DlforgeError, match="needs labels"):
        generate(conditional, 2, steps=2, guidance_scale=2.0)
    with pytest.raises(DlforgeError, match="labels must be in 0..2"):
        generate(conditional, 2, steps=2, labels=[0, 3])
    with pytest.raises(DlforgeError, match="2 labels for 3 images"):
        generate(conditional, 3, steps=2, labels=[0, 1])
    with pytest.raises(DlforgeError, match="eta applies to the ddim"):
        generate(model, 1, steps=2, scheduler="ddpm", eta=0.5)
    with pytest.raises(DlforgeError, match="unknown scheduler"):
        generate(model, 1, steps=2, scheduler="heun")
    with pytest.raises(DlforgeError, match="num_inference_steps"):
        generate(model, 1, steps=0)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_img2img(model, scheduler):
    x = images()
    assert torch.equal(img2img(model, x, strength=0.0, steps=10, scheduler=scheduler), x)
    weak = img2img(model, x, strength=0.2, steps=10, scheduler=scheduler, seed=0)
    strong = img2img(model, x, strength=1.0, steps=10, scheduler=scheduler, seed=0)
    assert weak.shape == x.shape
    assert (weak - x).abs().mean() < (strong - x).abs().mean()  # less noise, closer to the input
    assert torch.equal(weak, img2img(model, x, strength=0.2, steps=10, scheduler=scheduler, seed=0))
    assert img2img(model, x[0], strength=0.5, steps=4).shape == (1, 1, SIZE, SIZE)  # one (C, H, W) image
    with pytest.raises(DlforgeError, match="strength"):
        img2img(model, x, strength=1.5)
    with pytest.raises(DlforgeError, match="images must be"):
        img2img(model, torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("scheduler,resample,jump", [("ddpm", 1, 1), ("ddpm", 3, 2), ("ddim", 2, 1),
                                                     ("dpm++", 2, 1)])
def test_inpaint_keeps_the_known_region(model, scheduler, resample, jump):
    x = images()
    mask = torch.zeros(SIZE, SIZE)
    mask[2:6, 3:7] = 1
    out = inpaint(model, x, mask, steps=6, scheduler=scheduler, resample=resample, jump=jump, seed=0)
    known = mask.expand_as(x) == 0
    assert torch.equal(out[known], x[known])
    assert not torch.allclose(out[~known], x[~known])
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, inpaint(model, x, mask, steps=6, scheduler=scheduler, resample=resample, jump=jump,
                                    seed=0))


def test_resampling_changes_the_fill(model):
    x, mask = images(1), torch.zeros(1, 1, SIZE, SIZE)
    mask[..., :4] = 1
    once = inpaint(model, x, mask, steps=5, seed=0)
    assert not torch.equal(once, inpaint(model, x, mask, steps=5, resample=3, seed=0))
    with pytest.raises(DlforgeError, match="resample and jump"):
        inpaint(model, x, mask, resample=0)
    with pytest.raises(DlforgeError, match="does not fit"):
        inpaint(model, x, torch.ones(3, 3))


def test_inpaint_with_guidance(conditional):
    x, mask = images(2), torch.ones(SIZE, SIZE)
    mask[:2] = 0
    out = inpaint(conditional, x, mask, steps=4, labels=[0, 2], guidance_scale=2.0, seed=0)
    assert torch.equal(out[..., :2, :], x[..., :2, :])


def test_outpaint_keeps_the_centre(model):
    centre = images(1)[..., 2:6, 1:5]  # a 4×4 picture on the 8×8 canvas with pad (2, 3, 2, 1)
    out = outpaint(model, centre, (2, 3, 2, 1), steps=5, seed=0)
    assert out.shape == (1, 1, SIZE, SIZE)
    assert torch.equal(out[..., 2:6, 1:5], centre)
    # a full-size image is downscaled into the centre first
    big = outpaint(model, images(1), 2, steps=3, seed=0)
    expected = torch.nn.functional.interpolate(images(1), size=(4, 4), mode="bilinear", antialias=True)
    torch.testing.assert_close(big[..., 2:6, 2:6], expected.clamp(-1, 1))
    with pytest.raises(DlforgeError, match="leaves no room"):
        outpaint(model, centre, 4)


def test_process_strip(model, tmp_path):
    path = tmp_path / "strip.png"
    pictures = process_strip(model, images(1)[0], path, steps=10, frames=5, seed=0, scale=1)
    assert path.is_file() and path.stat().st_size > 0
    assert pictures.shape == (10, 1, SIZE, SIZE)
    assert torch.equal(pictures[0], images(1)[0].clamp(-1, 1))  # the top row starts from the clean image
    assert torch.equal(pictures[4], pictures[5])  # the bottom row starts from the noisiest top-row picture
    from PIL import Image

    assert Image.open(path).size == (5 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)
