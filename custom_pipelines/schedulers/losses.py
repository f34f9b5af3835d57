"""Pure loss math for diffusion training: Gaussian KL, the discretized Gaussian decoder, bits/dim.

All functions are elementwise (or reduce over the non-batch dimensions only) and differentiable. The scheduler
methods in `scheduling_ddpm_ancestral.py` (`training_losses`, `vlb_terms`, `prior_bpd`) call them.
"""

import math

import torch


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (batch): shape (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def nats_to_bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """Per-element nats (B, ...) -> per-example bits per dimension (B,)."""
    return mean_flat(nats) / math.log(2.0)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats.

    = ½ (−1 + logvar2 − logvar1 + e^{logvar1−logvar2} + (mean1 − mean2)² e^{−logvar2}). Log-variances keep it
    finite for the tiny posterior variances near t = 0.
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the approximation used for Ho et al.'s reported
    bits/dim (absolute error < 3e-4 against the exact Φ)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """log p(x) per element for the discretized Gaussian decoder of Ho et al. 2020, §3.3 (eq. 13).

    Data x in [−1, 1] lie on `num_bins` levels (2/(num_bins−1) apart); each level owns the interval of width
    2/(num_bins−1) around it, and the two outermost intervals extend to ±∞, so the probabilities of the levels
    sum to 1. `log_scales` is log σ (half the log-variance).
    """
    if x.shape != means.shape:
        raise ValueError(f"x and means must have the same shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    # Outermost levels are x = −1 and x = +1; compare with half a bin of slack against rounding.
    lowest, highest = x < -1.0 + half_bin, x > 1.0 - half_bin
    return torch.where(lowest, log_cdf_plus, torch.where(highest, log_one_minus_cdf_min, log_cdf_delta))


def standard_normal_prior_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) ‖ N(0, I)) per element: the prior term L_T of Ho et al. 2020, eq. 5."""
    return normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar))


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-example loss weights of Min-SNR-γ (Hang et al. 2023, eq. 11), for a loss on the `prediction_type` target.

    With SNR(t) = ᾱ_t / (1 − ᾱ_t), the x_0-loss weight is min(SNR, γ); an ε-loss equals SNR · the x_0-loss and a
    v-loss (SNR + 1) · the x_0-loss, so their weights are min(SNR, γ)/SNR and min(SNR, γ)/(SNR + 1). Clamping at γ
    stops the nearly clean timesteps from dominating the gradient, which speeds up convergence."""
    if not gamma > 0:
        raise ValueError(f"snr_gamma must be > 0, got {gamma}")
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    clamped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clamped / snr
    elif prediction_type == "sample":
        return clamped
    elif prediction_type == "v_prediction":
        return clamped / (snr + 1)
    else:
        raise ValueError(f"prediction_type must be epsilon, sample or v_prediction, got {prediction_type!r}")
