import itertools

import pytest
import torch
from diffusers import DDIMScheduler

from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from tests.schedulers.scheduler_test_utils import arange_sample, dummy_model


def run_loop(scheduler, num_inference_steps, seed=0, **step_kwargs):
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    x = arange_sample()
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize(
    "prediction_type, eta, use_clipped_model_output",
    list(itertools.product(["epsilon", "sample", "v_prediction"], [0.0, 1.0], [False, True])),
)
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"timestep_spacing": "trailing", "clip_sample": False},
        {"steps_offset": 1, "set_alpha_to_one": False},
        {"thresholding": True, "sample_max_value": 1.5, "beta_schedule": "squaredcos_cap_v2"},
    ],
)
def test_step_equals_diffusers(prediction_type, eta, use_clipped_model_output, config):
    config = {"prediction_type": prediction_type, **config}
    ours, theirs = DDIMEtaScheduler(**config), DDIMScheduler(**config)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    gen_ours, gen_theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    kwargs = {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
    for i, t in enumerate(ours.timesteps):
        out = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        a = ours.step(out, t, x, generator=gen_ours, **kwargs)
        b = theirs.step(out, t, x, generator=gen_theirs, **kwargs)
        assert (a.prev_sample - b.prev_sample).abs().max() < 1e-6
        assert (a.pred_original_sample - b.pred_original_sample).abs().max() < 1e-6
        x = a.prev_sample


def test_linspace_steps_by_the_spacing_like_diffusers():
    ours = DDIMEtaScheduler(timestep_spacing="linspace")
    ours.set_timesteps(10)
    assert ours.timesteps.tolist()[:3] == [999, 888, 777]
    assert ours.previous_timestep(888) == 788  # diffusers: 888 - 1000 // 10, not the next scheduled 777
    assert ours.previous_timestep(0) == -100  # < 0: the step ends at final_alpha_cumprod
    ours.set_timesteps(timesteps=ours.timesteps.tolist())  # the same schedule as custom timesteps: next entry
    assert ours.previous_timestep(888) == 777 and ours.previous_timestep(0) == -1


def test_eta_one_equals_ddpm_posterior_step():
    """σ_t(η=1)² = β̃'_t and the mean collapses to DDPM's posterior mean (Song et al. §4.1)."""
    ddim, ddpm = DDIMEtaScheduler(clip_sample=False), DDPMAncestralScheduler(clip_sample=False)
    ddim.set_timesteps(10)
    ddpm.set_timesteps(10)
    x = arange_sample()
    for t in ddim.timesteps[:-1]:
        out = dummy_model(x, t)
        a = ddim.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t))).prev_sample
        b = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        x = a


def test_eta_zero_is_deterministic_and_ignores_the_generator():
    a = run_loop(DDIMEtaScheduler(), 10, seed=0)
    b = run_loop(DDIMEtaScheduler(), 10, seed=123)
    assert torch.equal(a, b)


def test_variance_noise_replaces_the_generator():
    scheduler = DDIMEtaScheduler()
    scheduler.set_timesteps(10)
    x, t = arange_sample(), scheduler.timesteps[2]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    a = scheduler.step(dummy_model(x, t), t, x, eta=0.5, variance_noise=noise).prev_sample
    b = scheduler.step(dummy_model(x, t), t, x, eta=0.5, generator=torch.Generator().manual_seed(5)).prev_sample
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        scheduler.step(x, t, x, eta=0.5, variance_noise=noise, generator=torch.Generator())


@pytest.mark.parametrize(
    "config, num_inference_steps, eta, expected",
    [
        ({}, 10, 0.0, (-0.4485182762145996, 0.22425906360149384)),
        ({}, 10, 1.0, (-7.766382694244385, 0.31281590461730957)),
        ({}, 50, 0.0, (-0.5020532608032227, 0.25102663040161133)),
        (
            {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
            10,
            0.0,
            (-0.13318240642547607, 0.06659131497144699),
        ),
    ],
)
def test_full_loop_frozen(config, num_inference_steps, eta, expected):
    x = run_loop(DDIMEtaScheduler(**config), num_inference_steps, eta=eta)
    assert x.sum().item() == pytest.approx(expected[0], abs=1e-3)
    assert x.abs().mean().item() == pytest.approx(expected[1], abs=1e-5)


def test_step_rejects_bad_arguments():
    scheduler = DDIMEtaScheduler()
    x = arange_sample()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="eta must be in"):
        scheduler.step(x, 900, x, eta=-0.1)
    with pytest.raises(ValueError, match="eta must be in"):
        scheduler.step(x, 900, x, eta=1.5)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\], got 1000"):
        scheduler.step(x, 1000, x)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\], got -1"):
        scheduler.step(x, -1, x)
    scheduler.set_timesteps(timesteps=[900, 500, 100])
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        scheduler.step(x, 901, x)
    with pytest.raises(ValueError, match="split off a learned variance"):
        scheduler.step(torch.cat([x, x], dim=1), 900, x)
