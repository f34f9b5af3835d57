"""Consistency distillation's pieces as small pure functions (Song et al. 2023, "Consistency Models", §4 and
Algorithm 2; Luo et al. 2023, "Latent Consistency Models", §4.2–4.3).

A consistency function maps any point x_t of a probability-flow ODE trajectory to its origin x_0. It is
parameterised so that the boundary condition f(x, t_min) = x holds by construction (Song et al. 2023, eq. 7):

    f_θ(x, t) = c_skip(t) x + c_out(t) x̂_0(F_θ(x, t), x, t)

with x̂_0 the clean image the network's output (ε, v or x₀, the teacher's prediction type) implies. The scalings are
LCM's discrete ones (c_skip = σ_d² / ((s t)² + σ_d²), c_out = s t / √((s t)² + σ_d²), σ_d = 0.5, s the
`timestep_scaling`), identical to diffusers' `LCMScheduler.get_scalings_for_boundary_condition_discrete`: a student
trained with these functions is sampled by `LCMScheduler` unchanged. At t = 0, c_skip = 1 and c_out = 0: f(x, 0) = x.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

from custom_pipelines.schedulers.common import predict_original_sample

SIGMA_DATA = 0.5  # LCMScheduler's σ_data
ConsistencyLossType = Literal["l2", "huber"]
CONSISTENCY_LOSS_TYPES = get_args(ConsistencyLossType)


def skipping_grid(num_train_timesteps: int, num_ddim_timesteps: int) -> tuple[torch.Tensor, int]:
    """The N timesteps t_n = (n + 1)·k − 1 (n = 0 … N−1, k = ⌊T / N⌋) that the student is distilled on, and k.

    These are `LCMScheduler`'s "original" timesteps for `original_inference_steps = N` (LCM §4.3, the skipping-step
    schedule): every few-step schedule it samples with is a subset of them.
    """
    if not isinstance(num_ddim_timesteps, int) or not 1 <= num_ddim_timesteps <= num_train_timesteps:
        raise ValueError(f"num_ddim_timesteps must be an int in [1, {num_train_timesteps}], got {num_ddim_timesteps}")
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * k - 1, k


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip(t), c_out(t)) per timestep, float64-free and broadcastable to `[B, 1, 1, 1]`."""
    scaled = timesteps.double() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip.float().view(-1, 1, 1, 1), c_out.float().view(-1, 1, 1, 1)


def alphas_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t per sample, shaped `[B, 1, 1, 1]` on `like`'s device and dtype."""
    return alphas_cumprod.to(like.device)[timesteps.long()].to(like.dtype).view(-1, 1, 1, 1)


def consistency_function(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0 (Song et al. 2023, eq. 7), x̂_0 from the network's output."""
    x0, _ = predict_original_sample(
        model_output, sample, alphas_at(alphas_cumprod, timesteps, sample), prediction_type
    )
    c_skip, c_out = boundary_scalings(timesteps, timestep_scaling)
    return c_skip.to(sample) * sample + c_out.to(sample) * x0


def default_huber_c(sample_shape: torch.Size | tuple[int, ...]) -> float:
    """c = 0.00054 √d for d = C·H·W (Song & Dhariwal 2023, "Improved techniques for training consistency models",
    §3.3): the pseudo-Huber loss's scale grows with the data's dimension."""
    return 0.00054 * math.sqrt(math.prod(sample_shape[1:]))


def consistency_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_type: ConsistencyLossType = "huber",
    huber_c: float | None = None,
) -> torch.Tensor:
    """d(f_θ(x_{t_{n+1}}), f_θ⁻(x̂_{t_n})) averaged over the batch: squared L2 (per element mean), or pseudo-Huber
    √(‖a − b‖² + c²) − c per sample (Song & Dhariwal 2023, eq. 11), which is robust to outliers like L1 yet smooth."""
    prediction, target = prediction.float(), target.float()
    if loss_type == "l2":
        return torch.mean((prediction - target) ** 2)
    elif loss_type == "huber":
        c = default_huber_c(prediction.shape) if huber_c is None else float(huber_c)
        squared = ((prediction - target) ** 2).flatten(1).sum(dim=1)
        return torch.mean(torch.sqrt(squared + c**2) - c)
    else:
        raise ValueError(f"loss_type must be one of {CONSISTENCY_LOSS_TYPES}, got {loss_type!r}")
