import itertools

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from custom_pipelines.schedulers.scheduling_dpmsolver_2m import DPMSolver2MScheduler
from tests.schedulers.scheduler_test_utils import arange_sample, dummy_model


def run_loop(scheduler, num_inference_steps=None, model=dummy_model, x=None, timesteps=None):
    scheduler.set_timesteps(num_inference_steps, timesteps=timesteps)
    x = arange_sample() if x is None else x
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x


def diffusers_dpmpp_2m(**config):
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **config)


@pytest.mark.parametrize(
    "prediction_type, spacing, steps",
    list(itertools.product(["epsilon", "sample", "v_prediction"], ["linspace", "trailing", "leading"], [3, 10, 20])),
)
@pytest.mark.parametrize(
    "schedule",
    [{"beta_schedule": "linear"}, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}],
)
def test_full_loop_agrees_with_diffusers(prediction_type, spacing, steps, schedule):
    """Same algorithm; our solver coefficients are float64, diffusers' float32: measured max |Δ| <= 2.2e-6."""
    config = {"prediction_type": prediction_type, "timestep_spacing": spacing, **schedule}
    ours, theirs = DPMSolver2MScheduler(**config), diffusers_dpmpp_2m(**config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    assert (run_loop(ours, steps) - run_loop(theirs, steps)).abs().max() < 1e-5


@pytest.mark.parametrize(
    "config, tolerance",
    [
        # x̂_0 = (x − σε)/α at t = 999 divides float32 rounding by α = 4.9e-5: measured max |Δ| 2.3e-4
        ({"beta_schedule": "squaredcos_cap_v2"}, 1e-3),
        ({"use_karras_sigmas": True}, 5e-5),  # measured 1.1e-5
        ({"solver_type": "heun"}, 1e-5),
        ({"final_sigmas_type": "sigma_min", "lower_order_final": False}, 1e-5),
        ({"thresholding": True, "sample_max_value": 1.5}, 1e-5),
        ({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, 1e-3),
    ],
)
def test_options_agree_with_diffusers(config, tolerance):
    ours, theirs = DPMSolver2MScheduler(**config), diffusers_dpmpp_2m(timestep_spacing="trailing", **config)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert (run_loop(ours, 10) - run_loop(theirs, 10)).abs().max() < tolerance


def test_first_order_solver_equals_ddim():
    """DPM-Solver++(1) is DDIM with η = 0 (Lu et al. 2022, §3.1)."""
    dpm = DPMSolver2MScheduler(solver_order=1)
    dpm.set_timesteps(10)
    ddim = DDIMEtaScheduler(clip_sample=False)
    torch.testing.assert_close(
        run_loop(dpm, 10), run_loop(ddim, timesteps=dpm.timesteps.tolist()), rtol=1e-5, atol=1e-5
    )


def test_lower_order_final_only_matters_below_15_steps():
    def final(steps, lower_order_final):
        scheduler = DPMSolver2MScheduler(final_sigmas_type="sigma_min", lower_order_final=lower_order_final)
        return run_loop(scheduler, steps)

    assert not torch.allclose(final(10, True), final(10, False))
    assert torch.equal(final(15, True), final(15, False))


def mixture_eps_model(alphas_cumprod):
    """Exact ε-prediction for data ~ 0.3 N(−1, 0.5²) + 0.7 N(0.8, 0.5²), so solvers can be compared exactly."""
    means, weights, std = torch.tensor([-1.0, 0.8]), torch.tensor([0.3, 0.7]), 0.5

    def model(x, t):
        a = alphas_cumprod[int(t)].double()
        var = a * std**2 + 1 - a
        log_post = torch.log(weights) - 0.5 * (x[..., None] - a.sqrt() * means) ** 2 / var
        x0_k = means + a.sqrt() * std**2 / var * (x[..., None] - a.sqrt() * means)
        x0 = (torch.softmax(log_post, -1) * x0_k).sum(-1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model


def test_ten_steps_halve_the_error_of_ddim_ten_steps_on_an_exact_model():
    """Against the 1000-step DDIM solution of the same ODE: measured RMS error 0.064 (2M, 10 steps),
    0.148 (DDIM, 10 steps), 0.030 (DDIM, 50 steps)."""
    x_T = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = mixture_eps_model(DDIMEtaScheduler().alphas_cumprod)
    ddim = DDIMEtaScheduler(clip_sample=False, timestep_spacing="trailing")
    reference = run_loop(ddim, 1000, model, x_T)

    def rms_error(scheduler, steps):
        return (run_loop(scheduler, steps, model, x_T) - reference).pow(2).mean().sqrt().item()

    dpm_10, ddim_10 = rms_error(DPMSolver2MScheduler(), 10), rms_error(ddim, 10)
    assert dpm_10 < 0.5 * ddim_10 and dpm_10 < 0.08
    assert rms_error(DPMSolver2MScheduler(), 20) < rms_error(ddim, 50)


@pytest.mark.parametrize(
    "config, expected",
    [
        ({}, (-0.4830894470214844, 0.24154473841190338)),
        ({"prediction_type": "v_prediction"}, (-0.19820234179496765, 0.09910113364458084)),
        ({"use_karras_sigmas": True}, (-0.5897939205169678, 0.2948967516422272)),
    ],
)
def test_full_loop_frozen(config, expected):
    x = run_loop(DPMSolver2MScheduler(**config), 10)
    assert x.sum().item() == pytest.approx(expected[0], abs=1e-3)
    assert x.abs().mean().item() == pytest.approx(expected[1], abs=1e-5)


def test_begin_index_starts_mid_schedule_like_diffusers():
    ours, theirs = DPMSolver2MScheduler(), diffusers_dpmpp_2m(timestep_spacing="trailing")
    results = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(4)
        x = arange_sample()
        for t in scheduler.timesteps[4:]:
            x = scheduler.step(dummy_model(x, t), t, x).prev_sample
        results.append(x)
    assert (results[0] - results[1]).abs().max() < 1e-5


def test_learned_variance_channels_are_dropped():
    plain, learned = DPMSolver2MScheduler(), DPMSolver2MScheduler(variance_type="learned_range")
    with_variance = lambda x, t: torch.cat([dummy_model(x, t), torch.ones_like(x)], dim=1)  # noqa: E731
    assert torch.equal(run_loop(plain, 5), run_loop(learned, 5, with_variance))


def test_step_rejects_misuse():
    scheduler = DPMSolver2MScheduler()
    x = arange_sample()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        scheduler.step(x, 998, x)
    with pytest.raises(ValueError, match="must equal sample shape"):
        scheduler.step(torch.cat([x, x], dim=1), 999, x)
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t), t, x).prev_sample
    with pytest.raises(ValueError, match="all 3 steps were taken"):
        scheduler.step(x, scheduler.timesteps[-1], x)


def test_step_output_and_half_precision():
    scheduler = DPMSolver2MScheduler()
    scheduler.set_timesteps(5)
    x = arange_sample()
    out = scheduler.step(dummy_model(x, 999), 999, x)
    assert out.pred_original_sample.shape == x.shape
    again = DPMSolver2MScheduler()
    again.set_timesteps(5)
    (prev,) = again.step(dummy_model(x, 999), 999, x, return_dict=False)
    assert torch.equal(prev, out.prev_sample)
    half = DPMSolver2MScheduler()
    half.set_timesteps(5)
    y = half.step(dummy_model(x, 999).half(), 999, x.half()).prev_sample
    assert y.dtype == torch.float16 and (y.float() - out.prev_sample).abs().max() < 1e-2


def test_karras_sigmas_with_repeated_first_timestep_run_a_full_loop():
    """Karras σ's on the cosine schedule repeat t = 999; a loop over `timesteps` must still take every step."""
    scheduler = DPMSolver2MScheduler(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    scheduler.set_timesteps(6)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]  # the situation under test
    sample = torch.linspace(-1, 1, 32).reshape(2, 1, 4, 4)
    for i, t in enumerate(scheduler.timesteps):
        sample = scheduler.step(0.1 * sample, t, sample).prev_sample
        assert scheduler.step_index == i + 1
    assert torch.isfinite(sample).all()
