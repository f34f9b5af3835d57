"""Our DDPM/DDIM schedulers against diffusers' `DDPMScheduler`/`DDIMScheduler`: same config keys and calls give the
same results, or a `ValueError` whose reason docs/schedulers.md ("Compatibility with diffusers") records.

Each test compares whole loops of the fixed dummy model `x·t/(t+1)` on an `arange` sample (the same seeded noise on
both sides), or asserts a refusal message."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

from custom_pipelines.schedulers import DDIMEtaScheduler, DDPMAncestralScheduler
from tests.schedulers.scheduler_test_utils import arange_sample, dummy_model

PAIRS = {"ddpm": (DDPMAncestralScheduler, DDPMScheduler), "ddim": (DDIMEtaScheduler, DDIMScheduler)}


def run_loop(scheduler, timesteps, seed=0, **step_kwargs):
    """Every step's (prev_sample, pred_original_sample) of a loop over `timesteps` from the arange sample."""
    generator = torch.Generator().manual_seed(seed)
    x, outputs = arange_sample(), []
    for t in timesteps:
        out = scheduler.step(dummy_model(x, t), t, x, generator=generator, **step_kwargs)
        outputs.append((out.prev_sample, out.pred_original_sample))
        x = out.prev_sample
    return outputs


def assert_loops_close(ours, theirs, atol=1e-6):
    assert len(ours) == len(theirs)
    for (a, a0), (b, b0) in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)
        torch.testing.assert_close(a0, b0, rtol=1e-5, atol=atol)


def compare(kind, config, num_inference_steps=10, timesteps=None, **step_kwargs):
    """Build both schedulers from `config`, set the same schedule, run the same loop, compare every step."""
    ours_cls, theirs_cls = PAIRS[kind]
    ours, theirs = ours_cls(**config), theirs_cls(**config)
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=0)
    loop = ours.timesteps if timesteps is None else timesteps
    assert_loops_close(run_loop(ours, loop, **step_kwargs), run_loop(theirs, loop, **step_kwargs))


# --- timesteps: spacing, steps_offset, previous timestep ---------------------------------------------------------


@pytest.mark.parametrize("T", [1000, 999, 100])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_set_timesteps_equals_diffusers_for_every_step_count(T, spacing):
    """diffusers' "trailing" rounding decides some entries by ±1; for some n (61 of 1000) it also appends a −1."""
    ours, theirs = (
        DDPMAncestralScheduler(num_train_timesteps=T, timestep_spacing=spacing),
        DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing),
    )
    extra = []
    for n in range(1, T + 1):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert len(ours.timesteps) == n
        assert ours.timesteps.tolist() == theirs.timesteps[:n].tolist(), n
        if len(theirs.timesteps) > n:
            assert theirs.timesteps[n:].tolist() == [-1]  # diffusers' step then reads ᾱ[−1] = ᾱ_{T−1}
            extra.append(n)
    assert (61 in extra) == (spacing == "trailing" and T == 1000)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(
    "config, num_inference_steps",
    [
        ({"timestep_spacing": "linspace"}, 10),  # 888 -> 788 (not the next scheduled 777), as diffusers
        ({"timestep_spacing": "trailing"}, 7),  # T not a multiple of n
        ({"timestep_spacing": "trailing"}, 61),  # diffusers' extra −1 entry is not stepped here (see above)
        ({"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}, 10),
        ({"timestep_spacing": "trailing", "prediction_type": "v_prediction", "clip_sample": False}, 10),
    ],
)
def test_ddim_steps_by_the_spacing_like_diffusers(config, num_inference_steps, eta):
    ours, theirs = DDIMEtaScheduler(**config), DDIMScheduler(**config)
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    assert ours.timesteps.tolist() == theirs.timesteps[:num_inference_steps].tolist()
    assert_loops_close(run_loop(ours, ours.timesteps, eta=eta), run_loop(theirs, ours.timesteps, eta=eta))


@pytest.mark.parametrize(
    "config, num_inference_steps",
    [
        ({"timestep_spacing": "linspace"}, 10),
        # the last step starts at t > 0: diffusers adds noise of σ = √1e-20 there, ours none (same result)
        ({"timestep_spacing": "trailing"}, 7),
        ({"timestep_spacing": "trailing", "variance_type": "fixed_small_log"}, 61),
        ({"timestep_spacing": "leading", "steps_offset": 1}, 10),
    ],
)
def test_ddpm_every_spacing_equals_diffusers(config, num_inference_steps):
    ours, theirs = DDPMAncestralScheduler(**config), DDPMScheduler(**config)
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    assert ours.timesteps.tolist() == theirs.timesteps[:num_inference_steps].tolist()
    assert_loops_close(run_loop(ours, ours.timesteps), run_loop(theirs, ours.timesteps))


def test_ddim_off_grid_timesteps_step_like_diffusers():
    """A user's loop over timesteps that `set_timesteps` did not produce: t' = t − T // n, as diffusers."""
    ours, theirs = DDIMEtaScheduler(), DDIMScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    off_grid = [995, 893, 777, 650, 512, 431, 305, 150, 64, 3]
    as_tensors = [torch.tensor(t) for t in off_grid]
    assert_loops_close(run_loop(ours, off_grid), run_loop(theirs, off_grid))
    assert_loops_close(run_loop(ours, as_tensors, eta=1.0), run_loop(theirs, as_tensors, eta=1.0))
    assert_loops_close(run_loop(ours, as_tensors), run_loop(ours, off_grid), atol=0)


def test_ddim_custom_timesteps_step_to_the_next_entry():
    """Our extension (diffusers' DDIM has no `timesteps=`): a custom leading schedule equals diffusers' spaced one,
    and a custom schedule has no spacing, so an off-schedule timestep is refused."""
    ours, theirs = DDIMEtaScheduler(), DDIMScheduler()
    theirs.set_timesteps(10)
    ours.set_timesteps(timesteps=theirs.timesteps.tolist())
    assert_loops_close(run_loop(ours, ours.timesteps, eta=1.0), run_loop(theirs, theirs.timesteps, eta=1.0))
    x = arange_sample()
    with pytest.raises(ValueError, match="timestep 901 is not in the scheduler's timesteps"):
        ours.step(x, 901, x)


@pytest.mark.parametrize("timesteps", [None, [999, 800, 420, 130, 7]])
def test_ddpm_previous_timestep_has_diffusers_type_and_value(timesteps):
    ours, theirs = DDPMAncestralScheduler(), DDPMScheduler()
    # before set_timesteps: timestep − 1, typed as the input
    assert ours.previous_timestep(500) == theirs.previous_timestep(500) == 499
    assert type(ours.previous_timestep(500)) is type(theirs.previous_timestep(500)) is int
    assert isinstance(ours.previous_timestep(torch.tensor(500)), torch.Tensor)
    if timesteps is None:
        ours.set_timesteps(10)
        theirs.set_timesteps(10)
    else:
        ours.set_timesteps(timesteps=timesteps)
        theirs.set_timesteps(timesteps=timesteps)
    for t in list(theirs.timesteps) + [int(t) for t in theirs.timesteps]:
        a, b = ours.previous_timestep(t), theirs.previous_timestep(t)
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype == torch.int64 and a.shape == b.shape == () and a.item() == b.item()


def test_ddim_previous_timestep_is_a_tensor_like_ddpm():
    """diffusers' DDIMScheduler has no previous_timestep: ours follows DDPMScheduler's type, t − T // n as value."""
    scheduler = DDIMEtaScheduler(timestep_spacing="linspace")
    assert scheduler.previous_timestep(500) == 499 and type(scheduler.previous_timestep(500)) is int
    scheduler.set_timesteps(10)
    prev = scheduler.previous_timestep(888)
    assert isinstance(prev, torch.Tensor) and prev.dtype == torch.int64 and prev.item() == 788


# --- step: timestep types, off-grid DDPM, custom timesteps --------------------------------------------------------


def test_ddpm_int_and_tensor_timesteps_give_diffusers_results():
    ours, theirs = DDPMAncestralScheduler(), DDPMScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    as_ints = [int(t) for t in ours.timesteps]
    reference = run_loop(theirs, theirs.timesteps)
    assert_loops_close(run_loop(ours, ours.timesteps), reference)
    assert_loops_close(run_loop(ours, as_ints), reference)
    assert_loops_close(run_loop(theirs, as_ints), reference, atol=0)


def test_ddpm_custom_timesteps_equal_diffusers():
    ours, theirs = (
        DDPMAncestralScheduler(variance_type="fixed_small_log"),
        DDPMScheduler(variance_type="fixed_small_log"),
    )
    ours.set_timesteps(timesteps=[999, 800, 420, 130, 7, 0])
    theirs.set_timesteps(timesteps=[999, 800, 420, 130, 7, 0])
    assert_loops_close(run_loop(ours, ours.timesteps), run_loop(theirs, theirs.timesteps))


def test_ddpm_refuses_an_off_grid_timestep_as_diffusers_does():
    """A DDPM step goes to the next scheduled timestep; off the schedule there is none (diffusers: IndexError)."""
    ours, theirs = DDPMAncestralScheduler(), DDPMScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x = arange_sample()
    with pytest.raises(IndexError):
        theirs.step(x, 901, x)
    with pytest.raises(ValueError, match="timestep 901 is not in the scheduler's timesteps .*IndexError"):
        ours.step(x, 901, x)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_step_before_set_timesteps(kind):
    """DDPM: the full T-step chain, as diffusers; DDIM: both refuse (no num_inference_steps to step by)."""
    ours_cls, theirs_cls = PAIRS[kind]
    ours, theirs = ours_cls(), theirs_cls()
    if kind == "ddpm":
        timesteps = list(range(20, -1, -1))
        assert_loops_close(run_loop(ours, timesteps), run_loop(theirs, timesteps))
    else:
        x = arange_sample()
        with pytest.raises(ValueError):
            theirs.step(x, 999, x)
        with pytest.raises(ValueError, match="call set_timesteps before step"):
            ours.step(x, 999, x)


# --- x̂_0 options: thresholding, clipping -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize(
    "config",
    [
        {"thresholding": True, "sample_max_value": 0.5},  # below 1: s = 0.5 for every example, as diffusers
        {"thresholding": True, "sample_max_value": 3.0, "dynamic_thresholding_ratio": 0.0},
        {"thresholding": True, "sample_max_value": 2.0, "dynamic_thresholding_ratio": 1.0},
        {"clip_sample_range": 0.5},
        {"clip_sample_range": 2.0, "prediction_type": "sample"},
        {"clip_sample": False, "clip_sample_range": 0.0},  # unused when not clipping: accepted, as diffusers
        {"thresholding": True, "clip_sample_range": -1.0},  # thresholding overrides clipping
    ],
)
def test_x0_options_equal_diffusers(kind, config):
    compare(kind, config)


@pytest.mark.parametrize("cls", [DDPMAncestralScheduler, DDIMEtaScheduler])
@pytest.mark.parametrize(
    "config, match",
    [
        ({"thresholding": True, "sample_max_value": 0.0}, r"sample_max_value must be > 0 .*got 0.0"),
        ({"thresholding": True, "sample_max_value": -1.0}, r"sample_max_value must be > 0 .*got -1.0"),
        ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio must be in \[0, 1\]"),
        ({"clip_sample_range": 0.0}, r"clip_sample_range must be > 0 when clip_sample=True"),
    ],
)
def test_x0_options_without_meaning_are_refused(cls, config, match):
    with pytest.raises(ValueError, match=match):
        cls(**config)


def test_diffusers_gives_nan_for_sample_max_value_zero():
    """The reason sample_max_value <= 0 is refused: diffusers divides x̂_0 by s = 0."""
    theirs = DDPMScheduler(thresholding=True, sample_max_value=0.0)
    assert torch.isnan(theirs._threshold_sample(arange_sample())).any()


# --- noise schedule: trained_betas, zero terminal SNR ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_trained_betas_equal_diffusers(kind):
    betas = np.linspace(0.01, 0.3, 20).tolist()
    compare(kind, {"num_train_timesteps": 20, "trained_betas": betas, "clip_sample": False}, num_inference_steps=5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_trained_betas_may_end_at_one_as_diffusers(kind):
    """β_T = 1 (a precomputed zero-terminal-SNR schedule) is accepted; v_prediction handles ᾱ_T = 0."""
    betas = rescale_zero_terminal_snr(torch.linspace(1e-4, 0.02, 1000)).tolist()
    assert betas[-1] == 1.0
    config = {"trained_betas": betas, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    compare(kind, config)


@pytest.mark.parametrize("cls", [DDPMAncestralScheduler, DDIMEtaScheduler])
@pytest.mark.parametrize("length", [500, 1200])
def test_trained_betas_of_another_length_are_refused(cls, length):
    """diffusers keeps num_train_timesteps = 1000: with 500 betas its step indexes past them, with 1200 the last
    200 are never used. We refuse and say what to pass."""
    betas = np.linspace(1e-4, 0.02, length).tolist()
    theirs = DDPMScheduler(trained_betas=betas)
    assert theirs.config.num_train_timesteps == 1000 and len(theirs.alphas_cumprod) == length
    if length < 1000:
        theirs.set_timesteps(10)
        x = arange_sample()
        with pytest.raises(IndexError):
            theirs.step(x, theirs.timesteps[0], x)
    with pytest.raises(ValueError, match=r"num_train_timesteps=1000 floats.*pass num_train_timesteps=len\(trained_b"):
        cls(trained_betas=betas)
    assert cls(trained_betas=betas, num_train_timesteps=length).config.num_train_timesteps == length


@pytest.mark.parametrize("cls", [DDPMAncestralScheduler, DDIMEtaScheduler])
def test_beta_schedules_we_do_not_implement_are_refused(cls):
    """diffusers' DDPM knows "laplace" and ignores beta_schedule when trained_betas is given; we refuse both."""
    assert len(DDPMScheduler(beta_schedule="laplace").betas) == 1000
    assert len(DDPMScheduler(trained_betas=[0.1] * 1000, beta_schedule="unknown").betas) == 1000
    with pytest.raises(ValueError, match="beta_schedule must be one of .* got 'laplace'"):
        cls(beta_schedule="laplace")
    with pytest.raises(ValueError, match="beta_schedule must be one of .* got 'unknown'"):
        cls(trained_betas=[0.1] * 1000, beta_schedule="unknown")


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_rescale_betas_zero_snr_equals_diffusers(kind):
    config = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    compare(kind, config)


# --- forward process, configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_add_noise_and_get_velocity_equal_diffusers(kind, dtype):
    ours_cls, theirs_cls = PAIRS[kind]
    ours, theirs = ours_cls(beta_schedule="squaredcos_cap_v2"), theirs_cls(beta_schedule="squaredcos_cap_v2")
    x0 = arange_sample().to(dtype)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    for timesteps in (torch.tensor([3, 998], dtype=torch.int32), torch.tensor([500]), torch.tensor([[7], [0]])):
        torch.testing.assert_close(
            ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps), rtol=0, atol=0
        )
        torch.testing.assert_close(
            ours.get_velocity(x0, noise, timesteps), theirs.get_velocity(x0, noise, timesteps), rtol=0, atol=0
        )


CONFIGS = {
    "ddpm": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "variance_type": "fixed_small_log",
        "prediction_type": "v_prediction",
        "timestep_spacing": "linspace",
        "clip_sample_range": 1.5,
    },
    "ddim": {
        "beta_schedule": "squaredcos_cap_v2",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "sample",
        "thresholding": True,
        "sample_max_value": 0.8,
    },
}


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_from_config_both_ways_gives_diffusers_results(kind):
    ours_cls, theirs_cls = PAIRS[kind]
    theirs = theirs_cls(**CONFIGS[kind])
    ours = ours_cls.from_config(theirs.config)
    back = theirs_cls.from_config(ours.config)
    for key, value in CONFIGS[kind].items():
        assert ours.config[key] == back.config[key] == value
    for scheduler in (ours, theirs, back):
        scheduler.set_timesteps(10)
    reference = run_loop(theirs, theirs.timesteps)
    assert_loops_close(run_loop(ours, ours.timesteps), reference)
    assert_loops_close(run_loop(back, back.timesteps), reference, atol=0)


def test_eta_outside_zero_one_is_refused_where_diffusers_gives_nan():
    theirs = DDIMScheduler()
    theirs.set_timesteps(10)
    x = arange_sample()
    for t in theirs.timesteps:
        x = theirs.step(dummy_model(x, t), t, x, eta=1.01, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.isnan(x).any()
    ours = DDIMEtaScheduler()
    ours.set_timesteps(10)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ours.step(x, 900, x, eta=1.01)
