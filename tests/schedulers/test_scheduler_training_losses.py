import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch.distributions import Normal, kl_divergence

from custom_pipelines.schedulers.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    min_snr_weights,
    normal_kl,
)
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler

LOG2 = math.log(2.0)


def test_normal_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(4))
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)


def test_approx_cdf_is_close_to_exact():
    x = torch.linspace(-6, 6, 10001, dtype=torch.float64)
    assert (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max() < 3e-4


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.9, -5.0), (-1.0, -1.0), (0.3, 0.5), (1.2, -4.0)])
def test_discretized_gaussian_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(
        levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
    )
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def tiny_1d_case(variance_type="fixed_small"):
    """T = 10 linear schedule, 1-D data on the 256-level grid, one example per timestep."""
    scheduler = DDPMAncestralScheduler(
        num_train_timesteps=10, beta_start=0.01, beta_end=0.2, variance_type=variance_type
    )
    g = torch.Generator().manual_seed(0)
    timesteps = torch.arange(10)
    x0 = (torch.randint(0, 256, (10, 1), generator=g) / 127.5 - 1).double()
    noise = torch.randn(10, 1, generator=g, dtype=torch.float64)
    eps_hat = noise + 0.3 * torch.randn(10, 1, generator=g, dtype=torch.float64)  # an imperfect model
    return scheduler, timesteps, x0, noise, eps_hat


def direct_posterior(betas, t):
    """Mean coefficients and variance of q(x_{t-1} | x_t, x_0), straight from Ho et al. eqs. 6-7."""
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    a_t, a_prev, beta = alphas_cumprod[t], (alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0)), betas[t]
    coef_x0 = a_prev.sqrt() * beta / (1 - a_t)
    coef_xt = (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
    return a_t, coef_x0, coef_xt, beta * (1 - a_prev) / (1 - a_t)


def test_vlb_terms_equal_direct_gaussian_formulas():
    scheduler, timesteps, x0, noise, eps_hat = tiny_1d_case()
    betas = scheduler.betas.double()
    xt = scheduler.add_noise(x0, noise, timesteps)
    terms = scheduler.vlb_terms(eps_hat, x0, xt, timesteps)
    assert terms.shape == (10,)
    for t in range(10):
        a_t, coef_x0, coef_xt, variance = direct_posterior(betas, t)
        x0_hat = (xt[t] - (1 - a_t).sqrt() * eps_hat[t]) / a_t.sqrt()
        model_mean = coef_x0 * x0_hat + coef_xt * xt[t]
        if t > 0:
            true = Normal(coef_x0 * x0[t] + coef_xt * xt[t], variance.sqrt())
            expected = kl_divergence(true, Normal(model_mean, variance.sqrt())) / LOG2
            torch.testing.assert_close(terms[t : t + 1], expected, rtol=1e-6, atol=1e-9)
        else:  # decoder with σ² = β̃_1 (the clipped posterior variance at t = 0)
            sigma = direct_posterior(betas, 1)[3].sqrt()
            decoder = Normal(model_mean, sigma)
            upper = torch.tensor(math.inf) if x0[0] > 0.999 else x0[0] + 1 / 255
            lower = torch.tensor(-math.inf) if x0[0] < -0.999 else x0[0] - 1 / 255
            expected = -torch.log(decoder.cdf(upper) - decoder.cdf(lower)) / LOG2
            torch.testing.assert_close(terms[:1], expected, rtol=2e-3, atol=1e-3)  # Φ approximation


def test_prior_bpd_equals_kl_to_standard_normal():
    scheduler, _, x0, _, _ = tiny_1d_case()
    a_T = torch.cumprod(1 - scheduler.betas.double(), 0)[-1]
    expected = kl_divergence(Normal(a_T.sqrt() * x0, (1 - a_T).sqrt()), Normal(0.0, 1.0)).squeeze(1) / LOG2
    torch.testing.assert_close(scheduler.prior_bpd(x0), expected)
    # the standard T = 1000 linear schedule ends ~1e-5 bits/dim away from pure noise (Ho et al. Table 2)
    assert DDPMAncestralScheduler().prior_bpd(torch.ones(1, 3, 2, 2)).item() < 1e-4


def test_learned_range_exact_model_has_zero_kl():
    scheduler, timesteps, x0, noise, _ = tiny_1d_case("learned_range")
    xt = scheduler.add_noise(x0, noise, timesteps)
    # ε̂ = ε and v = -1 (σ² = β̃_t): p_θ(x_{t-1} | x_t) is exactly the posterior
    perfect = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    assert scheduler.vlb_terms(perfect, x0, xt, timesteps)[1:].abs().max() < 1e-9


def test_training_targets_per_prediction_type():
    x0, noise, t = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), torch.tensor([0, 10, 500, 999])
    assert torch.equal(DDPMAncestralScheduler().training_target(x0, noise, t), noise)
    assert torch.equal(DDPMAncestralScheduler(prediction_type="sample").training_target(x0, noise, t), x0)
    v = DDPMAncestralScheduler(prediction_type="v_prediction").training_target(x0, noise, t)
    torch.testing.assert_close(v, DDPMScheduler().get_velocity(x0, noise, t))


def test_loss_simple_is_mse_and_simple_losses_dict():
    scheduler = DDPMAncestralScheduler()
    x0, noise, out = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(scheduler.loss_simple(out, x0, noise, t), F.mse_loss(out, noise))
    losses = scheduler.training_losses(out, x0, noise, t)
    assert losses["loss"] == losses["loss_simple"] and losses["loss_vlb"] == 0


def test_hybrid_loss_trains_only_the_variance_through_vlb():
    scheduler = DDPMAncestralScheduler(variance_type="learned_range")
    scheduler.set_timesteps(10)  # sampling respacing must not change the training losses
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (4, 3, 4, 4), generator=g) / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    out = torch.randn(4, 6, 4, 4, generator=g).requires_grad_(True)
    losses = scheduler.training_losses(out, x0, noise, t, loss_type="hybrid")
    assert losses["loss"].item() == pytest.approx((losses["loss_simple"] + 0.001 * losses["loss_vlb"]).item())
    assert losses["loss_vlb"] > 0
    (grad,) = torch.autograd.grad(losses["loss_vlb"], out)
    assert grad[:, :3].abs().max() == 0 and grad[:, 3:].abs().max() > 0  # stop-gradient on the mean
    fresh = DDPMAncestralScheduler(variance_type="learned_range")
    again = fresh.training_losses(out, x0, noise, t, loss_type="hybrid")
    assert torch.equal(again["loss"], losses["loss"])


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_hybrid_with_fixed_variance_raises(variance_type):
    scheduler = DDPMAncestralScheduler(variance_type=variance_type)
    x = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="learned_range"):
        scheduler.training_losses(x, x, x, torch.tensor([1, 2]), loss_type="hybrid")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "l1"}, "loss_type"),
        ({"vlb_weight": -1.0}, "vlb_weight"),
        ({"timesteps": torch.tensor([0, 1000])}, "timesteps must lie in"),
        ({"timesteps": torch.tensor([-1, 3])}, "timesteps must lie in"),
        ({"timesteps": torch.tensor([0.5, 3.0])}, "integers"),
        ({"timesteps": torch.tensor([1, 2, 3])}, "one per example"),
    ],
)
def test_training_losses_reject_bad_arguments(kwargs, match):
    scheduler = DDPMAncestralScheduler()
    x = torch.zeros(2, 3, 2, 2)
    args = {"timesteps": torch.tensor([1, 2]), **kwargs}
    with pytest.raises(ValueError, match=match):
        scheduler.training_losses(x, x, x, **args)


def test_sample_training_timesteps_cover_the_full_schedule():
    scheduler = DDPMAncestralScheduler()
    scheduler.set_timesteps(10)
    t = scheduler.sample_training_timesteps(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == 999 and len(t.unique()) > 900
    again = scheduler.sample_training_timesteps(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_min_snr_weights_known_values_and_bad_input():
    """Hang et al. 2023: SNR = ᾱ/(1−ᾱ); x_0-loss weight min(SNR, γ), ε-loss /SNR, v-loss /(SNR + 1)."""
    alpha = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)  # SNR 1, 9, 99
    torch.testing.assert_close(min_snr_weights(alpha, 5.0, "sample"), torch.tensor([1.0, 5.0, 5.0]).double())
    torch.testing.assert_close(min_snr_weights(alpha, 5.0, "epsilon"), torch.tensor([1.0, 5 / 9, 5 / 99]).double())
    torch.testing.assert_close(min_snr_weights(alpha, 5.0, "v_prediction"), torch.tensor([0.5, 0.5, 0.05]).double())
    with pytest.raises(ValueError, match="snr_gamma must be > 0"):
        min_snr_weights(alpha, 0.0, "epsilon")
    with pytest.raises(ValueError, match="prediction_type must be"):
        min_snr_weights(alpha, 5.0, "flow")


def test_min_snr_loss_weights_each_example_and_reduces_to_l_simple():
    scheduler = DDPMAncestralScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    clean, noise, output = (torch.randn(4, 1, 8, 8, generator=g) for _ in range(3))
    timesteps = torch.tensor([0, 10, 500, 999])
    plain = scheduler.training_losses(output, clean, noise, timesteps)["loss"]
    huge = scheduler.training_losses(output, clean, noise, timesteps, snr_gamma=1e9)["loss"]
    torch.testing.assert_close(huge, plain)  # ε-prediction: weight 1 wherever SNR < γ
    weighted = scheduler.training_losses(output, clean, noise, timesteps, snr_gamma=5.0)["loss"]
    alpha = scheduler.alphas_cumprod[timesteps].double()
    per_example = ((output - noise) ** 2).flatten(1).mean(1).double()
    expected = (min_snr_weights(alpha, 5.0, "epsilon") * per_example).mean()
    torch.testing.assert_close(weighted.double(), expected, rtol=1e-5, atol=1e-6)
    assert weighted < plain  # the nearly clean t = 0, 10 examples are down-weighted
