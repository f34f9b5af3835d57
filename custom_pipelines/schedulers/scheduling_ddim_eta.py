"""DDIM (Song et al. 2021) with the η knob between deterministic DDIM (η = 0) and DDPM (η = 1)."""

import numbers

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .beta_schedules import BetaSchedule
from .common import (
    NoiseScheduleMixin,
    PredictionType,
    SchedulerStepOutput,
    SpacedTimestepsMixin,
    TimestepSpacing,
    check_spacing_options,
    check_x0_options,
    clip_or_threshold,
    predict_original_sample,
)


class DDIMEtaScheduler(NoiseScheduleMixin, SpacedTimestepsMixin, SchedulerMixin, ConfigMixin):
    """Generalised DDIM sampler (Song et al. 2021, eqs. 12 and 16).

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z, with
    σ_t(η) = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}), t' the timestep the step goes to (below).
    η = 0 is deterministic DDIM; η = 1 makes σ_t² the DDPM posterior variance β̃'_t of the respaced process, and
    the step is then exactly DDPM's ancestral step wherever t' is the next scheduled timestep.

    Config keys, meanings and `step` are diffusers' `DDIMScheduler`'s: for the same config and generator the
    results are equal (tested to 1e-6, whole loops, every spacing). As in diffusers, t' = t − T // num_inference_steps
    computed from the spacing, so `step` also takes a timestep that is not in `self.timesteps`. For "linspace"
    spacing, or "trailing" when T is not a multiple of the step count, t' is then not the next scheduled timestep
    (888 -> 788, not 777, for 10 of 1000 "linspace" steps): kept, because diffusers' pipelines and users' loops give
    exactly these results. To step between the entries of an arbitrary schedule, pass it as
    `set_timesteps(timesteps=[...])` (our extension): t' is then the next entry, and an off-schedule timestep is
    refused (custom timesteps have no spacing to step by).

    Args:
        num_train_timesteps (`int`, defaults to 1000), beta_start (`float`, 1e-4), beta_end (`float`, 0.02),
        beta_schedule (`str`, `"linear"`), trained_betas (*optional*): the training noise schedule, as
            `DDPMAncestralScheduler`.
        clip_sample (`bool`, defaults to `True`): clip x̂_0 to ±`clip_sample_range` (1.0, > 0 when used).
        set_alpha_to_one (`bool`, defaults to `True`): ᾱ after the final step is 1 (a clean x_0); if `False`, it
            is ᾱ at t = 0 (the step then ends at x_0 of the training process rather than at clean data).
        steps_offset (`int`, defaults to 0): added to "leading" timesteps (Stable Diffusion uses 1).
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"sample"` or `"v_prediction"`.
        thresholding (`bool`, defaults to `False`), dynamic_thresholding_ratio (0.995, in [0, 1]), sample_max_value
            (1.0, > 0): dynamic thresholding of x̂_0 (Saharia et al. 2022); overrides `clip_sample`.
        timestep_spacing (`str`, defaults to `"leading"`): `"leading"`, `"trailing"` or `"linspace"`.
        rescale_betas_zero_snr (`bool`, defaults to `False`): zero terminal SNR (Lin et al. 2023).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        check_spacing_options(timestep_spacing, steps_offset)
        check_x0_options(
            prediction_type, thresholding, dynamic_thresholding_ratio, sample_max_value, clip_sample_range, clip_sample
        )
        self._init_noise_schedule()
        # ᾱ "after" the final step: 1 (clean data) or ᾱ_0 (Song et al.'s original code)
        self.final_alpha_cumprod = torch.tensor(1.0, device="cpu") if set_alpha_to_one else self.alphas_cumprod[0]
        self._init_full_schedule()

    def _previous_t(self, timestep: int | torch.Tensor) -> int:
        """t' = t − T // num_inference_steps, as diffusers (any t in [0, T)); the next entry for custom timesteps."""
        if self.custom_timesteps or self.num_inference_steps is None:
            return self._next_scheduled_timestep(timestep)
        t, T = int(timestep), self.config.num_train_timesteps
        if not 0 <= t < T:
            raise ValueError(f"timestep must be in [0, {T - 1}], got {t}")
        return t - T // self.num_inference_steps

    def _get_variance(self, alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor) -> torch.Tensor:
        """σ_t(1)² = (1 − ᾱ_{t'})/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_{t'}) (Song et al. 2021, eq. 16 with η = 1)."""
        return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple:
        """One generalised DDIM step x_t -> x_{t'} (Song et al. 2021, eq. 12).

        Args:
            model_output (`torch.Tensor`): the network output at `timestep`, shaped like `sample`.
            timestep (`int` or 0-d `torch.Tensor`): the current timestep t in [0, T), usually an entry of
                `self.timesteps`; the step goes to t − T // num_inference_steps (to the next entry for custom
                timesteps, which must then contain t).
            sample (`torch.Tensor`): x_t.
            eta (`float`, defaults to 0.0): η in [0, 1]; 0 is deterministic DDIM, 1 is DDPM's variance. Others
                are refused (diffusers: NaN for η > 1, a noiseless shrunken step for η < 0).
            use_clipped_model_output (`bool`, defaults to `False`): recompute ε̂ from the clipped x̂_0 (as GLIDE
                does) so the direction term agrees with the clipped x̂_0.
            generator (`torch.Generator`, *optional*): source of the noise z when η > 0.
            variance_noise (`torch.Tensor`, *optional*): z itself, instead of `generator` (not both).
            return_dict (`bool`, defaults to `True`): return a `SchedulerStepOutput` instead of a tuple.

        Returns:
            `SchedulerStepOutput(prev_sample, pred_original_sample)` or the tuple `(prev_sample, x̂_0)`.
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
            # diffusers takes any η, but for η > 1 the direction √(1 − ᾱ_{t'} − σ_t²) turns NaN (from t = 100 of
            # 10 steps at η = 1.01), and η < 0 adds no noise yet still shrinks that direction: refused instead
            raise ValueError(f"eta must be in [0, 1] (σ_t(η) of Song et al. 2021, eq. 16), got {eta!r}")
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step, not both")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} must equal sample shape {tuple(sample.shape)}; "
                "split off a learned variance before calling DDIM"
            )
        prev_timestep = self._previous_t(timestep)

        # 1. ᾱ_t and ᾱ_{t'}
        alpha_prod_t = self.alphas_cumprod[int(timestep)]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t

        # 2. x̂_0 = f_θ(x_t) and ε̂ (eq. 12's "predicted x_0"), then clip or threshold x̂_0
        pred_original_sample, pred_epsilon = predict_original_sample(
            model_output, sample, alpha_prod_t, self.config.prediction_type
        )
        pred_original_sample = clip_or_threshold(pred_original_sample, self.config, self.config.clip_sample)
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)

        # 3. σ_t(η) (eq. 16) and the "direction pointing to x_t" √(1 − ᾱ_{t'} − σ_t²) ε̂ (eq. 12)
        std_dev_t = eta * self._get_variance(alpha_prod_t, alpha_prod_t_prev) ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction

        # 4. random noise σ_t z
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + std_dev_t * variance_noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
