import itertools

import pytest
import torch
from diffusers import DDPMScheduler

from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from tests.schedulers.scheduler_test_utils import arange_sample, dummy_model


def model_output_for(scheduler, sample, t, seed):
    """A random model output; learned variances get a second block of channels in [-1, 1]."""
    out = torch.randn(sample.shape, generator=torch.Generator().manual_seed(seed))
    if scheduler.config.variance_type in ("learned", "learned_range"):
        v = torch.rand(sample.shape, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
        out = torch.cat([out, v], dim=1)
    return out


def step_pair(config, num_inference_steps, max_steps=None):
    """Run ours and diffusers' DDPMScheduler side by side; return the largest difference of every output."""
    ours, theirs = DDPMAncestralScheduler(**config), DDPMScheduler(**config)
    if num_inference_steps is not None:
        ours.set_timesteps(num_inference_steps)
        theirs.set_timesteps(num_inference_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    gen_ours, gen_theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    worst = 0.0
    for i, t in enumerate(ours.timesteps[:max_steps]):
        out = model_output_for(ours, x, t, seed=i)
        a = ours.step(out, t, x, generator=gen_ours)
        b = theirs.step(out, t, x, generator=gen_theirs)
        worst = max(worst, (a.prev_sample - b.prev_sample).abs().max().item())
        worst = max(worst, (a.pred_original_sample - b.pred_original_sample).abs().max().item())
        x = a.prev_sample
    return worst


@pytest.mark.parametrize(
    "prediction_type, variance_type",
    list(itertools.product(["epsilon", "sample", "v_prediction"], ["fixed_small", "fixed_large", "learned_range"])),
)
@pytest.mark.parametrize("num_inference_steps, spacing", [(None, "leading"), (10, "leading"), (7, "linspace")])
def test_step_equals_diffusers(prediction_type, variance_type, num_inference_steps, spacing):
    config = {"prediction_type": prediction_type, "variance_type": variance_type, "timestep_spacing": spacing}
    # the full 1000-step chain is checked on its first and last 50 steps to keep the test fast
    if num_inference_steps is None:
        assert step_pair(config, None, max_steps=50) < 1e-6
        ours, theirs = DDPMAncestralScheduler(**config), DDPMScheduler(**config)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
        for t in range(49, -1, -1):
            out = model_output_for(ours, x, t, seed=t)
            a = ours.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            b = theirs.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            assert (a - b).abs().max() < 1e-6
            x = a
    else:
        assert step_pair(config, num_inference_steps) < 1e-6


@pytest.mark.parametrize("config", [{"clip_sample": False}, {"thresholding": True, "sample_max_value": 2.0}])
def test_step_equals_diffusers_without_clipping_and_with_thresholding(config):
    assert step_pair(config, 10) < 1e-6


def test_trailing_final_step_returns_posterior_mean_where_diffusers_adds_noise():
    """diffusers adds N(0, β'_t) noise at the final step when it is not t = 0 ("trailing"): β' = 1 − ᾱ_99."""
    config = {"variance_type": "fixed_large", "timestep_spacing": "trailing", "clip_sample": False}
    ours, theirs = DDPMAncestralScheduler(**config), DDPMScheduler(**config)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, t = arange_sample(), ours.timesteps[-1]
    assert int(t) == 99 and ours.previous_timestep(t) == -1
    out = dummy_model(x, t)
    ours_out = ours.step(out, t, x, generator=torch.Generator().manual_seed(0))
    theirs_out = theirs.step(out, t, x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours_out.prev_sample, ours_out.pred_original_sample)  # ᾱ_prev = 1: the mean is x̂_0
    assert (theirs_out.prev_sample - ours_out.prev_sample).std() > 0.1


@pytest.mark.parametrize("num_inference_steps", [None, 10])
def test_full_loop_frozen(num_inference_steps):
    scheduler = DDPMAncestralScheduler()
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(0)
    x = arange_sample()
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t), t, x, generator=generator).prev_sample
    expected = {None: (-11.754936218261719, 0.3485136926174164), 10: (-7.803756237030029, 0.31291326880455017)}
    assert x.sum().item() == pytest.approx(expected[num_inference_steps][0], abs=1e-3)
    assert x.abs().mean().item() == pytest.approx(expected[num_inference_steps][1], abs=1e-5)


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"prediction_type": "v_prediction"}, (-4.8689961433410645, 0.18921081721782684)),
        ({"variance_type": "fixed_large"}, (-11.748268127441406, 0.48829808831214905)),
        ({"variance_type": "learned_range"}, (-8.918307304382324, 0.3715623617172241)),
    ],
)
def test_respaced_loop_frozen_per_option(config, expected):
    scheduler = DDPMAncestralScheduler(**config)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = arange_sample()
    for t in scheduler.timesteps:
        out = dummy_model(x, t)
        if config.get("variance_type") == "learned_range":
            out = torch.cat([out, torch.zeros_like(out)], dim=1)  # v = 0: the geometric mean of β̃' and β'
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    assert x.sum().item() == pytest.approx(expected[0], abs=1e-3)
    assert x.abs().mean().item() == pytest.approx(expected[1], abs=1e-5)


def test_fixed_large_variance_ratio_grows_as_steps_get_fewer():
    """β'_t / β̃'_t = (1 − ᾱ_t)/(1 − ᾱ_prev): the trap of fixed_large with few respaced steps."""
    scheduler = DDPMAncestralScheduler()
    mean_ratios, median_ratios = [], []
    for steps in (1000, 250, 50, 10, 5):
        scheduler.set_timesteps(steps)
        ratios = torch.stack(
            [large / small for small, large in map(scheduler.step_variances, scheduler.timesteps[:-1])]
        )
        mean_ratios.append(ratios.mean().item())
        median_ratios.append(ratios.median().item())
    assert all(a < b for a, b in zip(mean_ratios, mean_ratios[1:])), mean_ratios
    assert all(a < b for a, b in zip(median_ratios, median_ratios[1:])), median_ratios
    # measured: mean ratio 1.01 (1000 steps), 1.06 (250), 2.4 (50), 118 (10), 860 (5)
    assert mean_ratios[0] < 1.02 and mean_ratios[3] > 50 and mean_ratios[4] > 500

    # full schedule: β_t and β̃_t agree to 2% for t >= 100 and 1% for t >= 200; near t = 0 they differ 2x
    scheduler.set_timesteps(1000)
    small, large = zip(*(scheduler.step_variances(t) for t in range(1, 1000)))
    ratio = torch.stack(large) / torch.stack(small)
    assert (ratio[99:] - 1).abs().max() < 0.02 and (ratio[199:] - 1).abs().max() < 0.01
    assert ratio[0] > 1.9


def test_fixed_large_log_is_finite_and_equals_fixed_large():
    outputs = []
    for variance_type in ("fixed_large", "fixed_large_log"):
        scheduler = DDPMAncestralScheduler(variance_type=variance_type)
        scheduler.set_timesteps(10)
        x, t = arange_sample(), scheduler.timesteps[1]
        outputs.append(scheduler.step(dummy_model(x, t), t, x, generator=torch.Generator().manual_seed(0)).prev_sample)
    assert torch.isfinite(outputs[1]).all()
    torch.testing.assert_close(outputs[0], outputs[1])


def test_custom_timesteps_and_tuple_output():
    scheduler = DDPMAncestralScheduler()
    scheduler.set_timesteps(timesteps=[900, 500, 100, 0])
    assert scheduler.timesteps.tolist() == [900, 500, 100, 0] and scheduler.num_inference_steps == 4
    assert scheduler.previous_timestep(500) == 100 and scheduler.previous_timestep(0) == -1
    x = arange_sample()
    prev, x0 = scheduler.step(
        dummy_model(x, 500), 500, x, generator=torch.Generator().manual_seed(0), return_dict=False
    )
    again = scheduler.step(dummy_model(x, 500), torch.tensor(500), x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prev, again.prev_sample) and torch.equal(x0, again.pred_original_sample)


def test_step_rejects_timestep_outside_schedule_and_wrong_channels():
    scheduler = DDPMAncestralScheduler()
    scheduler.set_timesteps(10)
    x = arange_sample()
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        scheduler.step(x, 901, x)
    learned = DDPMAncestralScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="2 \\* 3 channels"):
        learned.step(x, 999, x)
    with pytest.raises(ValueError, match="must equal sample shape"):
        scheduler.step(torch.cat([x, x], dim=1), 900, x)
