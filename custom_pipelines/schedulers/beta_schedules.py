"""Noise schedules β_1..β_T of discrete-time diffusion models, as small pure functions.

Every function returns a 1-D tensor of `num_train_timesteps` betas, index `i` holding β of the paper's step
`t = i + 1`. The names are diffusers' `beta_schedule` names so configs move between the two libraries unchanged;
`"cosine"` is accepted as an alias of diffusers' `"squaredcos_cap_v2"`; diffusers does not know "cosine", so our
schedulers store `"squaredcos_cap_v2"` in their config when given "cosine" (saved configs load in diffusers).

`make_beta_schedule(..., dtype=torch.float64)` (the default) computes in float64: use it for analysis. The
schedulers call it with `dtype=torch.float32`, which reproduces diffusers' float32 betas bit for bit (same
`torch.linspace` in the same dtype), so that `alphas_cumprod` and every `step` agree with diffusers exactly.
"""

import math

import torch

from ..options import BETA_SCHEDULES, BetaSchedule  # noqa: F401  (re-exported)


def linear_beta_schedule(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Ho et al. 2020, §4: β rising linearly from 1e-4 to 0.02 over T = 1000 steps."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=dtype)


def scaled_linear_beta_schedule(
    num_train_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Latent/Stable Diffusion's schedule: linear in sqrt(β), i.e. β_i = linspace(√β_start, √β_end)_i²."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=dtype) ** 2


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Unnormalised f(t) = cos²(((t + s) / (1 + s)) · π/2) of Nichol & Dhariwal 2021, eq. 17, with t in [0, 1].

    ᾱ_t = f(t) / f(0). The offset s keeps β_1 from being vanishingly small near t = 0.
    """
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_beta_schedule(
    num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: β_t = min(1 − ᾱ_t / ᾱ_{t−1}, max_beta) with ᾱ from `cosine_alpha_bar`.

    Computed in float64 whatever `dtype` is (diffusers does the same in Python floats). The clipping at 0.999
    only bites at the very last step, where f(1) ≈ 0 would make β_T = 1 and ᾱ_T = 0; it keeps every β < 1, so
    ᾱ stays finite, positive and strictly decreasing for any T (checked up to T = 4000 in the tests).
    """
    f = cosine_alpha_bar(torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps, s)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta).to(dtype)


def sigmoid_beta_schedule(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """GeoDiff (Xu et al. 2022): β = beta_start + (beta_end − beta_start) · sigmoid(linspace(−6, 6, T))."""
    x = torch.linspace(-6, 6, num_train_timesteps, dtype=dtype)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def check_num_train_timesteps(num_train_timesteps) -> None:
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")


def make_beta_schedule(
    beta_schedule: BetaSchedule,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Betas of a named schedule, shape `(num_train_timesteps,)`, in `dtype` (float64 by default).

    Args:
        beta_schedule (`str`): `"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"` (alias `"cosine"`) or
            `"sigmoid"`. The cosine schedule ignores `beta_start`/`beta_end`.
        num_train_timesteps (`int`): T >= 2 (with one step there is nothing between data and noise to learn).
        beta_start, beta_end (`float`): first and last β of the linear, scaled_linear and sigmoid schedules,
            0 < beta_start <= beta_end < 1.
        dtype (`torch.dtype`): float64 (default) or float32 (bit-identical to diffusers' float32 betas).
    """
    check_num_train_timesteps(num_train_timesteps)
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if beta_schedule in ("squaredcos_cap_v2", "cosine"):
        return cosine_beta_schedule(num_train_timesteps, dtype=dtype)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}"
        )
    if beta_schedule == "linear":
        return linear_beta_schedule(num_train_timesteps, beta_start, beta_end, dtype=dtype)
    elif beta_schedule == "scaled_linear":
        return scaled_linear_beta_schedule(num_train_timesteps, beta_start, beta_end, dtype=dtype)
    elif beta_schedule == "sigmoid":
        return sigmoid_beta_schedule(num_train_timesteps, beta_start, beta_end, dtype=dtype)
    else:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s<=t} (1 − β_s) (Ho et al. 2020, §2), in the dtype of `betas`."""
    return torch.cumprod(1.0 - betas, dim=0)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common diffusion noise schedules and sample steps are flawed"), Algorithm 1.

    Shifts and scales √ᾱ so that √ᾱ_T = 0 (zero terminal SNR) while √ᾱ_1 keeps its value. β_T becomes 1, so
    models must predict v or x_0: an ε-prediction cannot recover x_0 at the last step.
    """
    sqrt_alpha_bar = alphas_cumprod_from_betas(betas).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def betas_from_config(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas=None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The float32 CPU betas a scheduler with these (diffusers-named) config values uses; validates them.

    Always on the CPU, also under a `torch.device("meta")` context (as when pipelines are built without
    allocating): a schedule is a few thousand numbers that `step` indexes with Python integers.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    check_num_train_timesteps(num_train_timesteps)  # also with trained_betas
    with torch.device("cpu"):
        return _betas_from_config(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )


def _betas_from_config(
    num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
) -> torch.Tensor:
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            # diffusers keeps num_train_timesteps and indexes the betas with timesteps in [0, num_train_timesteps):
            # with fewer betas set_timesteps + step raise IndexError, with more the extra betas are never used
            raise ValueError(
                f"trained_betas must be a list of num_train_timesteps={num_train_timesteps} floats, got shape "
                f"{tuple(betas.shape)}; pass num_train_timesteps=len(trained_betas) (diffusers does not infer it: "
                "its timesteps would index past fewer betas or ignore the extra ones)"
            )
    else:
        betas = make_beta_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end, dtype=torch.float32)
    # β = 1 (ᾱ = 0 from there on) is allowed as in diffusers: zero-terminal-SNR schedules end with it
    if not bool(((betas > 0) & (betas <= 1)).all()):
        source = (
            "trained_betas" if trained_betas is not None else f"the {beta_schedule!r} schedule of beta_start/beta_end"
        )
        raise ValueError(
            f"{source}: every beta must lie in (0, 1]; got min {betas.min().item()} and max {betas.max().item()} "
            "(β <= 0 stops noising, β_0 = 0 makes the step to x_0 divide 0 by 0; β > 1 makes ᾱ negative)"
        )
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas
