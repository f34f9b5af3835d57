"""The teacher's probability-flow ODE step t → s over the skipping grid (s = t − k), as plain functions with one
signature: `step(denoise, x_t, t, s, alphas_cumprod, prediction_type) -> x̂_s`.

`denoise(x, t) -> network output` is the frozen teacher (with classifier-free guidance already applied for a guided
distillation). Timesteps are `[B]` integer tensors; ᾱ is the teacher scheduler's `alphas_cumprod`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from custom_pipelines.schedulers.common import predict_original_sample

from .consistency import alphas_at

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TeacherSolver = Literal["ddim", "dpmsolver"]
TEACHER_SOLVERS = get_args(TeacherSolver)


def ddim_step(
    denoise: Denoiser, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, alphas_cumprod, prediction_type: str
) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with σ = 0): x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s) ε̂. One teacher call."""
    alpha_t, alpha_s = alphas_at(alphas_cumprod, t, x_t), alphas_at(alphas_cumprod, s, x_t)
    x0, eps = predict_original_sample(denoise(x_t, t).to(x_t.dtype), x_t, alpha_t, prediction_type)
    return alpha_s.sqrt() * x0 + (1 - alpha_s).sqrt() * eps


def dpmsolver_2s_step(
    denoise: Denoiser, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, alphas_cumprod, prediction_type: str
) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1), the data-prediction second-order single-step solver, with
    its intermediate point at the integer timestep u = ⌊(t + s) / 2⌋ and r = (λ_u − λ_t) / h. Two teacher calls
    (one where t − s < 2: then it is DDIM)."""
    u = torch.div(t + s, 2, rounding_mode="floor")
    if bool((t - s < 2).any()):
        return ddim_step(denoise, x_t, t, s, alphas_cumprod, prediction_type)
    a_t, a_u, a_s = (alphas_at(alphas_cumprod, x, x_t) for x in (t, u, s))
    alpha = {"t": a_t.sqrt(), "u": a_u.sqrt(), "s": a_s.sqrt()}  # α = √ᾱ, σ = √(1 − ᾱ), λ = log(α / σ)
    sigma = {"t": (1 - a_t).sqrt(), "u": (1 - a_u).sqrt(), "s": (1 - a_s).sqrt()}
    lam = {key: torch.log(alpha[key] / sigma[key]) for key in alpha}
    h = lam["s"] - lam["t"]
    r = (lam["u"] - lam["t"]) / h
    x0_t, _ = predict_original_sample(denoise(x_t, t).to(x_t.dtype), x_t, a_t, prediction_type)
    x_u = (sigma["u"] / sigma["t"]) * x_t - alpha["u"] * torch.expm1(-r * h) * x0_t
    x0_u, _ = predict_original_sample(denoise(x_u, u).to(x_t.dtype), x_u, a_u, prediction_type)
    d = (1 - 1 / (2 * r)) * x0_t + (1 / (2 * r)) * x0_u
    return (sigma["s"] / sigma["t"]) * x_t - alpha["s"] * torch.expm1(-h) * d


def teacher_ode_step(
    solver: TeacherSolver,
    denoise: Denoiser,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """x̂_s from x_t by one step of `solver` ("ddim": 1 teacher call; "dpmsolver": DPM-Solver++(2S), 2 calls)."""
    if solver == "ddim":
        return ddim_step(denoise, x_t, t, s, alphas_cumprod, prediction_type)
    elif solver == "dpmsolver":
        return dpmsolver_2s_step(denoise, x_t, t, s, alphas_cumprod, prediction_type)
    else:
        raise ValueError(f"teacher solver must be one of {TEACHER_SOLVERS}, got {solver!r}")
