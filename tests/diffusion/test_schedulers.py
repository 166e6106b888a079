"""Schedulers: beta schedules and full sampling loops against diffusers (dev dependency), noising, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlforge.diffusion import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, make_scheduler
from dlforge.diffusion.schedules import alphas_cumprod, make_betas
from dlforge.errors import DlforgeError

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy-2 notices

OURS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
THEIRS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def pair(name, beta_schedule="linear", prediction_type="epsilon", **kwargs):
    ours = OURS[name](beta_schedule=beta_schedule, prediction_type=prediction_type, **kwargs)
    theirs = getattr(diffusers, THEIRS[name])(beta_schedule=DIFFUSERS_SCHEDULE[beta_schedule],
                                              prediction_type=prediction_type, **kwargs)
    return ours, theirs


def fake_model(x, t, alphas_cumprod, prediction_type):
    """A deterministic 'denoiser': the ε (or v) that would make x̂_0 = 0.7 tanh(x) + 0.2 sin(3x + t/150)."""
    ab = float(alphas_cumprod[int(t)])
    a, s = ab**0.5, (1 - ab) ** 0.5
    x0 = 0.7 * torch.tanh(x) + 0.2 * torch.sin(3 * x + int(t) / 150)
    eps = (x - a * x0) / s
    return eps if prediction_type == "epsilon" else a * eps - s * x0


def run_loop(sched, x, steps, model, **step_kwargs):
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, generator=gen, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_betas_match_diffusers(schedule):
    ours = make_betas(schedule, 1000)
    theirs = diffusers.DDPMScheduler(beta_schedule=DIFFUSERS_SCHEDULE[schedule]).betas.double()
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=0)
    # diffusers multiplies in float32; near the end of the cosine schedule (β ≈ 0.999) that costs ~1e-5 relative
    their_ab = diffusers.DDPMScheduler(beta_schedule=DIFFUSERS_SCHEDULE[schedule]).alphas_cumprod.double()
    torch.testing.assert_close(alphas_cumprod(ours), their_ab, rtol=2e-5, atol=0)
    assert 0 < make_betas(schedule, 1000).max() <= 0.999


@pytest.mark.parametrize("name,spacing", list(itertools.product(OURS, ["leading", "trailing", "linspace", None])))
def test_timesteps_match_diffusers(name, spacing):
    kwargs = {"timestep_spacing": spacing} if spacing else {}
    ours, theirs = pair(name, **kwargs)
    for steps in (1, 7, 10, 50, 333):
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        assert ours.timesteps.dtype == torch.long
        assert torch.equal(ours.timesteps, theirs.timesteps.long()), (name, spacing, steps)
        assert (ours.timesteps.diff() < 0).all()


def test_default_spacing_is_diffusers_default():
    assert DDPMScheduler().timestep_spacing == "leading" == diffusers.DDPMScheduler().config.timestep_spacing
    assert DDIMScheduler().timestep_spacing == "leading" == diffusers.DDIMScheduler().config.timestep_spacing
    assert (DPMSolverMultistepScheduler().timestep_spacing == "linspace"
            == diffusers.DPMSolverMultistepScheduler().config.timestep_spacing)


@pytest.mark.parametrize("name,schedule,prediction,spacing",
                         list(itertools.product(OURS, ["linear", "cosine"], ["epsilon", "v_prediction"],
                                                [None, "trailing"])))
def test_sampling_loop_matches_diffusers(name, schedule, prediction, spacing):
    kwargs = {"timestep_spacing": spacing} if spacing else {}
    ours, theirs = pair(name, schedule, prediction, **kwargs)
    # the same ᾱ table on both sides: diffusers' float32 cumprod differs by up to 1.3e-5 relative (cosine)
    theirs.alphas_cumprod = ours.alphas_cumprod.float()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: fake_model(x, t, ours.alphas_cumprod, prediction)
    a, b = run_loop(ours, x.clone(), 20, model), run_loop(theirs, x.clone(), 20, model)
    # diffusers evaluates 1 − ᾱ_t in float32, which near t = 0 (ᾱ ≈ 1) costs up to ~2e-5 on a sample
    torch.testing.assert_close(a, b, atol=3e-5, rtol=0)
    assert a.abs().max() > 0.1


@pytest.mark.parametrize("name,prediction", list(itertools.product(OURS, ["epsilon", "v_prediction"])))
def test_sampling_loop_matches_diffusers_own_schedule(name, prediction):
    ours, theirs = pair(name, "linear", prediction)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: fake_model(x, t, ours.alphas_cumprod, prediction)
    torch.testing.assert_close(run_loop(ours, x.clone(), 25, model), run_loop(theirs, x.clone(), 25, model),
                               atol=3e-5, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_with_noise_matches_diffusers(schedule):
    """eta = 1 draws the same noise from the same generator as diffusers."""
    ours, theirs = pair("ddim", schedule, "epsilon")
    theirs.alphas_cumprod = ours.alphas_cumprod.float()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: fake_model(x, t, ours.alphas_cumprod, "epsilon")
    a = run_loop(ours, x.clone(), 20, model, eta=1.0)
    b = run_loop(theirs, x.clone(), 20, model, eta=1.0)
    torch.testing.assert_close(a, b, atol=3e-5, rtol=0)
    assert not torch.allclose(a, run_loop(ours, x.clone(), 20, model, eta=0.0), atol=1e-3)  # the noise matters


def test_add_noise_and_velocity_match_diffusers():
    ours, theirs = pair("ddpm", "cosine")
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(4, 2, 5, 5, generator=gen), torch.randn(4, 2, 5, 5, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    # (diffusers' float32 ᾱ_999 of the cosine schedule is off by ~1e-5 relative)
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), atol=5e-6, rtol=0)
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t), atol=5e-6, rtol=0)
    assert torch.equal(ours.training_target(x, noise, t), noise)
    v = make_scheduler("ddim", beta_schedule="cosine", prediction_type="v_prediction")
    torch.testing.assert_close(v.training_target(x, noise, t), ours.get_velocity(x, noise, t))
    # an int timestep broadcasts over the batch; the clean end keeps almost all of x
    torch.testing.assert_close(ours.add_noise(x, noise, 0), x, atol=0.02, rtol=0)


def test_prediction_roundtrip():
    """x̂_0 and ε̂ recovered from the exact ε or v of a noised sample."""
    for prediction in ("epsilon", "v_prediction"):
        sched = DDIMScheduler(beta_schedule="cosine", prediction_type=prediction)
        gen = torch.Generator().manual_seed(0)
        x0, eps = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
        xt = sched.add_noise(x0, eps, 300)
        pred_x0, pred_eps = sched.predict_x0_eps(sched.training_target(x0, eps, 300), xt, sched.alpha_bar(300))
        torch.testing.assert_close(pred_x0, x0, atol=1e-5, rtol=0)
        torch.testing.assert_close(pred_eps, eps, atol=1e-5, rtol=0)


def test_dpm_solver_restarts_at_first_order_midway():
    """Starting part-way through the schedule (img2img) needs no history; the last step returns x̂_0."""
    sched = DPMSolverMultistepScheduler(prediction_type="v_prediction")
    sched.set_timesteps(10)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: fake_model(x, t, sched.alphas_cumprod, "v_prediction")
    for t in sched.timesteps[4:]:
        out = sched.step(model(x, t), t, x)
        x = out.prev_sample
    torch.testing.assert_close(x, out.pred_original_sample)
    assert torch.isfinite(x).all()


def test_errors():
    sched = DDIMScheduler()
    with pytest.raises(DlforgeError, match="set_timesteps"):
        sched.step(torch.zeros(1), 999, torch.zeros(1))
    for bad in (0, 1001):
        with pytest.raises(DlforgeError, match="num_inference_steps"):
            sched.set_timesteps(bad)
    sched.set_timesteps(10)
    with pytest.raises(DlforgeError, match="not in this scheduler's schedule"):
        sched.step(torch.zeros(1), 999, torch.zeros(1))
    with pytest.raises(DlforgeError, match="repeat timesteps"):
        DPMSolverMultistepScheduler(timestep_spacing="leading").set_timesteps(1000)
    with pytest.raises(DlforgeError, match="prediction_type"):
        DDPMScheduler(prediction_type="sample")
    with pytest.raises(DlforgeError, match="beta schedule"):
        DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(DlforgeError, match="timestep_spacing"):
        DDPMScheduler(timestep_spacing="even")
    with pytest.raises(DlforgeError, match="unknown scheduler"):
        make_scheduler("euler")
    with pytest.raises(DlforgeError, match="does not take"):
        make_scheduler("ddpm", eta=1.0)
    assert isinstance(make_scheduler("DPM-Solver++", beta_schedule="cosine"), DPMSolverMultistepScheduler)


def test_ddim_for_a_model_does_not_clip_but_the_class_default_does():
    from types import SimpleNamespace

    from dlforge.diffusion.schedulers import DDIMScheduler, make_scheduler

    config = SimpleNamespace(num_train_timesteps=1000, beta_schedule="cosine", prediction_type="v_prediction")
    assert make_scheduler("ddim", config).clip_sample is False  # clipping x̂_0 breaks guided DDIM sampling
    assert make_scheduler("ddim", config, clip_sample=True).clip_sample is True
    assert DDIMScheduler().clip_sample is True and make_scheduler("ddpm", config).clip_sample is True
