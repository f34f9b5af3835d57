"""Pieces shared by the discrete-time variance-preserving schedulers: option checks, timestep spacing,
x_0 prediction, clipping/thresholding, the forward process q(x_t | x_0) and the step output class."""

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from diffusers.utils import BaseOutput

# Each option is a Literal (for signatures) and the tuple of its values (for validation), defined once.
from ..options import PREDICTION_TYPES, PredictionType  # noqa: F401  (re-exported)
from .beta_schedules import alphas_cumprod_from_betas, betas_from_config

TimestepSpacing = Literal["linspace", "leading", "trailing"]
VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
TIMESTEP_SPACINGS = get_args(TimestepSpacing)
VARIANCE_TYPES = get_args(VarianceType)
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


@dataclass
class SchedulerStepOutput(BaseOutput):
    """Output of a scheduler's `step`.

    Args:
        prev_sample (`torch.Tensor`): x_{t−1}, the sample at the next (less noisy) timestep of the schedule.
        pred_original_sample (`torch.Tensor`, *optional*): the model's estimate of x_0 at this step (after clipping
            or thresholding), useful for previews and guidance.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_x0_options(
    prediction_type: str,
    thresholding: bool,
    dynamic_thresholding_ratio: float,
    sample_max_value: float,
    clip_sample_range: float = 1.0,
    clip_sample: bool = True,
) -> None:
    """Validates the x̂_0 options every scheduler here shares, each only where it is used (as diffusers uses it).

    The ranges are what diffusers' arithmetic gives a meaning to: torch.quantile needs a ratio in [0, 1];
    s = clamp(quantile, 1, sample_max_value) divides x̂_0, so sample_max_value <= 0 divides by 0 or flips signs
    (values in (0, 1) are fine: s is then sample_max_value itself); clip_sample_range <= 0 makes
    clamp(x̂_0, −r, r) return 0 or the constant r for every pixel.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if thresholding and not 0 <= dynamic_thresholding_ratio <= 1:
        raise ValueError(f"dynamic_thresholding_ratio must be in [0, 1], got {dynamic_thresholding_ratio}")
    if thresholding and not sample_max_value > 0:
        raise ValueError(f"sample_max_value must be > 0 (it divides x̂_0 when thresholding), got {sample_max_value}")
    if clip_sample and not thresholding and not clip_sample_range > 0:
        raise ValueError(
            f"clip_sample_range must be > 0 when clip_sample=True (x̂_0 is clamped to ±clip_sample_range), "
            f"got {clip_sample_range}"
        )


def check_spacing_options(timestep_spacing: str, steps_offset: int) -> None:
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")


def check_num_inference_steps(num_inference_steps, num_train_timesteps: int) -> None:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be in [1, num_train_timesteps={num_train_timesteps}], got {num_inference_steps}"
        )


def spaced_timesteps(
    timestep_spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
) -> np.ndarray:
    """Descending int64 timesteps of the DDPM/DDIM inference schedule, as diffusers spaces them.

    "linspace", "leading" and "trailing" are the columns of Lin et al. 2023, Table 2. Only "trailing" and
    "linspace" start at t = T − 1, where the sampler's N(0, I) input actually matches q(x_T).
    """
    T, n = num_train_timesteps, num_inference_steps
    check_num_inference_steps(n, T)
    if timestep_spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n).round()[::-1]
    elif timestep_spacing == "leading":
        timesteps = (np.arange(n) * (T // n))[::-1] + steps_offset
    elif timestep_spacing == "trailing":
        # diffusers' exact float arithmetic (its rounding decides some entries by ±1). For some n (61 of T = 1000,
        # ...) np.arange's float stop yields an (n+1)-th entry −1, on which diffusers' step reads ᾱ[−1] = ᾱ_{T−1}:
        # that entry is dropped.
        timesteps = (np.round(np.arange(T, 0, -T / n)) - 1)[:n]
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    timesteps = timesteps.astype(np.int64)
    if timesteps.max() >= T:
        raise ValueError(f"steps_offset={steps_offset} pushes timestep {timesteps.max()} past num_train_timesteps={T}")
    return timesteps


def check_custom_timesteps(timesteps, num_train_timesteps: int) -> np.ndarray:
    timesteps = np.asarray(timesteps)
    if timesteps.ndim != 1 or len(timesteps) == 0 or not np.issubdtype(timesteps.dtype, np.integer):
        raise ValueError(f"timesteps must be a non-empty list of integers, got {timesteps.tolist()!r}")
    if (np.diff(timesteps) >= 0).any():
        raise ValueError(f"timesteps must be strictly descending, got {timesteps.tolist()}")
    if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}], got {timesteps.tolist()}")
    return timesteps.astype(np.int64)


def check_one_of(num_inference_steps, timesteps) -> None:
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError(
            "pass exactly one of num_inference_steps or timesteps, got "
            f"num_inference_steps={num_inference_steps!r} and timesteps={timesteps!r}"
        )


def predict_original_sample(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from the network output, for x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε.

    epsilon: Ho et al. 2020, eq. 15; sample: x̂_0 is the output; v_prediction: v = √ᾱ ε − √(1−ᾱ) x_0
    (Salimans & Ho 2022, §4).
    """
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
    elif prediction_type == "v_prediction":
        pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return pred_original_sample, pred_epsilon


def dynamic_threshold(sample: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Saharia et al. 2022 (Imagen), §2.3: per example, s = the `ratio` quantile of |x̂_0|, clamped to
    [1, max_value]; then x̂_0 ← clamp(x̂_0, −s, s) / s. With s = 1 this is plain clipping to [−1, 1]."""
    dtype, shape = sample.dtype, sample.shape
    flat = sample.reshape(shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # torch.quantile needs float32/64
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


def clip_or_threshold(x0: torch.Tensor, config, clip_sample: bool) -> torch.Tensor:
    """Dynamic thresholding if `config.thresholding`, else clipping to ±clip_sample_range if `clip_sample`."""
    if config.thresholding:
        return dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if clip_sample:
        return x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0


def expand_to(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values `(B,)` to `(B, 1, ..., 1)` so they broadcast against `reference`."""
    return values.reshape(values.shape[:1] + (1,) * (reference.ndim - 1))


class NoiseScheduleMixin:
    """The forward process shared by all schedulers here; needs `self.config`."""

    def _init_noise_schedule(self) -> None:
        """β_t, α_t = 1 − β_t and ᾱ_t from the config: float32 on the CPU, equal to diffusers' bit for bit."""
        config = self.config
        self.betas = betas_from_config(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas,
            config.rescale_betas_zero_snr,
        )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = alphas_cumprod_from_betas(self.betas)
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I)
        if config.beta_schedule == "cosine":  # store diffusers' name so that diffusers can load the config
            self.register_to_config(beta_schedule="squaredcos_cap_v2")

    def _train_timesteps(self, timesteps, reference: torch.Tensor) -> torch.Tensor:
        """Timesteps on the full training schedule [0, T), as a long tensor of shape (B,) on reference's device."""
        timesteps = torch.as_tensor(timesteps, device=reference.device)
        if timesteps.is_floating_point() or timesteps.is_complex():
            raise ValueError(f"timesteps must be integers in [0, {self.config.num_train_timesteps}), got {timesteps}")
        timesteps = timesteps.long().reshape(-1)
        if len(timesteps) == 1 and reference.ndim > 0:
            timesteps = timesteps.expand(reference.shape[0])
        if reference.ndim > 0 and len(timesteps) != reference.shape[0]:
            raise ValueError(f"expected 1 or {reference.shape[0]} timesteps (one per example), got {len(timesteps)}")
        if len(timesteps) > 0 and (timesteps.min() < 0 or timesteps.max() >= self.config.num_train_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.config.num_train_timesteps - 1}], "
                f"got min {timesteps.min().item()} and max {timesteps.max().item()}"
            )
        return timesteps

    def _sqrt_alphas(self, timesteps, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = self._train_timesteps(timesteps, reference)
        alphas_cumprod = self.alphas_cumprod.to(device=reference.device, dtype=reference.dtype)[timesteps]
        sqrt_alpha = expand_to(alphas_cumprod**0.5, reference)
        sqrt_one_minus_alpha = expand_to((1 - alphas_cumprod) ** 0.5, reference)
        return sqrt_alpha, sqrt_one_minus_alpha

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4) with the given noise.

        `timesteps` (one per example, or one for all) index the full training schedule [0, T).
        """
        sqrt_alpha, sqrt_one_minus_alpha = self._sqrt_alphas(timesteps, original_samples)
        return sqrt_alpha * original_samples + sqrt_one_minus_alpha * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4), the v_prediction training target."""
        sqrt_alpha, sqrt_one_minus_alpha = self._sqrt_alphas(timesteps, sample)
        return sqrt_alpha * noise - sqrt_one_minus_alpha * sample

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Variance-preserving schedulers feed x_t to the model unscaled; kept for pipeline compatibility."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class SpacedTimestepsMixin:
    """`set_timesteps` and `previous_timestep` of the DDPM/DDIM samplers. By default a step goes to the next entry
    of `self.timesteps` (the last entry steps to x_0, marked by the previous timestep −1), as diffusers' DDPM does."""

    def _set_schedule(self, timesteps: np.ndarray, device=None) -> None:
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device)
        self._previous = dict(zip(timesteps.tolist(), timesteps[1:].tolist() + [-1]))

    def _init_full_schedule(self) -> None:
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._set_schedule(np.arange(self.config.num_train_timesteps)[::-1].astype(np.int64))

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Set the inference timesteps: `num_inference_steps` in [1, T] spaced by `config.timestep_spacing`, or
        explicit strictly descending `timesteps` in [0, T). Pass exactly one of the two."""
        check_one_of(num_inference_steps, timesteps)
        self.custom_timesteps = timesteps is not None
        if timesteps is not None:
            schedule = check_custom_timesteps(timesteps, self.config.num_train_timesteps)
        else:
            config = self.config
            schedule = spaced_timesteps(
                config.timestep_spacing, config.num_train_timesteps, num_inference_steps, config.steps_offset
            )
        self.num_inference_steps = len(schedule)
        self._set_schedule(schedule, device)

    def _next_scheduled_timestep(self, timestep: int | torch.Tensor) -> int:
        """The entry after `timestep` in `self.timesteps` (−1 after the last); refuses a timestep not in it."""
        t = int(timestep)
        if t not in self._previous:
            raise ValueError(
                f"timestep {t} is not in the scheduler's timesteps ({len(self.timesteps)} from "
                f"{int(self.timesteps[0])} to {int(self.timesteps[-1])}): a step goes to the next entry of the "
                "schedule, which an off-schedule timestep does not have (diffusers' DDPMScheduler raises IndexError "
                "there); call set_timesteps with a schedule that contains it"
            )
        return self._previous[t]

    def _previous_t(self, timestep: int | torch.Tensor) -> int:
        """The timestep `step` goes to, as a Python int (−1: the step ends at x_0)."""
        return self._next_scheduled_timestep(timestep)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep a `step` from `timestep` goes to (−1: the step ends at x_0), typed as in diffusers'
        `DDPMScheduler.previous_timestep`: a 0-d int64 tensor once `set_timesteps` was called, else
        `timestep − 1` (an int for an int, a tensor for a tensor) on the full training schedule."""
        if self.num_inference_steps is None:
            return timestep - 1
        return torch.tensor(self._previous_t(timestep), dtype=torch.int64, device=self.timesteps.device)
