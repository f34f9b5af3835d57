import math

import pytest
import torch
from diffusers import DDPMScheduler

from custom_pipelines.schedulers import alphas_cumprod_from_betas, make_beta_schedule
from custom_pipelines.schedulers.beta_schedules import (
    BETA_SCHEDULES,
    betas_from_config,
    cosine_alpha_bar,
    rescale_zero_terminal_snr,
)


def test_linear_equals_linspace():
    betas = make_beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=0, atol=0)


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012)
    torch.testing.assert_close(betas.sqrt(), torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64))


@pytest.mark.parametrize("T", [1000, 4000])
def test_cosine_is_finite_decreasing_and_matches_closed_form(T):
    betas = make_beta_schedule("squaredcos_cap_v2", T)
    alphas_cumprod = alphas_cumprod_from_betas(betas)
    assert torch.isfinite(betas).all() and torch.isfinite(alphas_cumprod).all()
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all() and (alphas_cumprod > 0).all()
    # ᾱ_t = f(t/T)/f(0) (Nichol & Dhariwal eq. 17); only the last step is clipped at β = 0.999
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    closed_form = cosine_alpha_bar(t) / cosine_alpha_bar(torch.zeros(1, dtype=torch.float64))
    assert (betas == 0.999).sum() == 1 and betas[-1] == 0.999
    torch.testing.assert_close(alphas_cumprod[:-1], closed_form[:-1], rtol=1e-10, atol=1e-15)
    # the float32 schedule the schedulers use keeps the same properties
    alphas_cumprod_32 = alphas_cumprod_from_betas(make_beta_schedule("cosine", T, dtype=torch.float32))
    assert torch.isfinite(alphas_cumprod_32).all() and (alphas_cumprod_32[1:] < alphas_cumprod_32[:-1]).all()


def test_cosine_is_alias_of_squaredcos_cap_v2():
    assert torch.equal(make_beta_schedule("cosine", 500), make_beta_schedule("squaredcos_cap_v2", 500))


def test_sigmoid_schedule_is_increasing_between_ends():
    betas = make_beta_schedule("sigmoid", 1000, 1e-4, 0.02)
    assert (betas[1:] > betas[:-1]).all()
    assert 1e-4 < betas[0] < 1.6e-4 and 0.0199 < betas[-1] < 0.02


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_float32_betas_equal_diffusers_bit_for_bit(name):
    kwargs = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
    ours = betas_from_config(1000, kwargs.get("beta_start", 1e-4), kwargs.get("beta_end", 0.02), name)
    theirs = DDPMScheduler(beta_schedule=name, **kwargs)
    assert torch.equal(ours, theirs.betas)
    assert torch.equal(alphas_cumprod_from_betas(ours), theirs.alphas_cumprod)


def test_rescale_zero_terminal_snr_matches_diffusers():
    betas = make_beta_schedule("scaled_linear", 1000, 0.00085, 0.012, dtype=torch.float32)
    rescaled = rescale_zero_terminal_snr(betas)
    theirs = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    )
    assert torch.equal(rescaled, theirs.betas)
    assert alphas_cumprod_from_betas(rescaled)[-1].abs() < 1e-12
    assert math.isclose(rescaled[0].item(), betas[0].item(), rel_tol=1e-4)  # √ᾱ_1 kept (up to float32)


def test_unknown_schedule_raises_listing_options():
    with pytest.raises(ValueError, match="beta_schedule must be one of") as info:
        make_beta_schedule("quadratic", 1000)
    for name in BETA_SCHEDULES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_schedule": "linear", "num_train_timesteps": 0}, "num_train_timesteps"),
        ({"beta_schedule": "linear", "num_train_timesteps": 10.0}, "num_train_timesteps"),
        ({"beta_schedule": "linear", "num_train_timesteps": 10, "beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
        ({"beta_schedule": "linear", "num_train_timesteps": 10, "beta_start": 0.0}, "beta_start"),
        ({"beta_schedule": "sigmoid", "num_train_timesteps": 10, "beta_end": 1.0}, "beta_end"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_beta_schedule(**kwargs)


def test_trained_betas_are_validated():
    with pytest.raises(ValueError, match="trained_betas"):
        betas_from_config(10, 1e-4, 0.02, "linear", trained_betas=[0.1] * 9)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        betas_from_config(3, 1e-4, 0.02, "linear", trained_betas=[0.1, 0.2, 1.5])
    assert torch.equal(betas_from_config(2, 1e-4, 0.02, "linear", [0.1, 0.2]), torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("T", [1, 0, -5, True, 2.0, "1000"])
def test_fewer_than_two_training_steps_is_refused_by_every_scheduler(T):
    from custom_pipelines import DDIMEtaScheduler, DDPMAncestralScheduler, DPMSolver2MScheduler

    for cls in (DDPMAncestralScheduler, DDIMEtaScheduler, DPMSolver2MScheduler):
        with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2"):
            cls(num_train_timesteps=T)
