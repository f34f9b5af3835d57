"""DDPM ancestral sampling (Ho et al. 2020) with respacing (Nichol & Dhariwal 2021) and training losses."""

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .beta_schedules import BetaSchedule
from .common import (
    LEARNED_VARIANCE_TYPES,
    VARIANCE_TYPES,
    NoiseScheduleMixin,
    PredictionType,
    SchedulerStepOutput,
    SpacedTimestepsMixin,
    TimestepSpacing,
    VarianceType,
    check_choice,
    check_spacing_options,
    check_x0_options,
    clip_or_threshold,
    predict_original_sample,
)
from .ddpm_training import DDPMTrainingMixin


class DDPMAncestralScheduler(NoiseScheduleMixin, SpacedTimestepsMixin, DDPMTrainingMixin, SchedulerMixin, ConfigMixin):
    """Ancestral sampler of Ho et al. 2020 (Algorithm 2) on a possibly respaced schedule, plus training losses.

    Sampling with `num_inference_steps` < T uses the respaced process of Nichol & Dhariwal 2021 (§4, App. B):
    for consecutive inference timesteps t > s, β'_t = 1 − ᾱ_t/ᾱ_s and the posterior variance
    β̃'_t = (1 − ᾱ_s)/(1 − ᾱ_t) · β'_t, so the variances stay those of the process the model was trained on.
    Config keys and their meaning are diffusers' `DDPMScheduler`'s; with the same config and generator, `step`
    equals diffusers' `step` (tested to 1e-6), except where diffusers is wrong:

    - the last step (to x_0) returns the posterior mean for every variance type: the posterior variance is 0
      there (Ho et al. Algorithm 2, z = 0 at t = 1; improved-diffusion does the same). diffusers adds noise at
      the last step whenever its timestep is > 0 ("trailing" spacing, `steps_offset`), and for `fixed_large`
      with variance β'_t = 1 − ᾱ_t, which ruins the sample. The same random numbers are drawn as in diffusers.
    - `fixed_large_log` adds noise of std √β'_t; diffusers takes the square root of log β'_t (NaN).

    Known trap: `fixed_large` (σ² = β'_t) with few respaced steps gives much noisier samples than `fixed_small`
    (σ² = β̃'_t): their ratio β'_t / β̃'_t = (1 − ᾱ_t)/(1 − ᾱ_s) grows as the steps get fewer (s farther from t).
    On the full schedule the two agree except near t = 0 (Ho et al. §3.2). Use `fixed_small` or a learned
    variance when respacing.

    Training helpers (`training_losses`, `vlb_terms`, `prior_bpd`, `training_target`, `get_velocity`, ...) come
    from `DDPMTrainingMixin` and always use the full T-step schedule, never the respaced one.

    Args:
        num_train_timesteps (`int`, defaults to 1000): T, the number of training diffusion steps.
        beta_start (`float`, defaults to 1e-4), beta_end (`float`, defaults to 0.02): ends of the β schedule.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"scaled_linear"`, `"squaredcos_cap_v2"`
            (alias `"cosine"`) or `"sigmoid"`; see `beta_schedules.py`.
        trained_betas (`list[float]`, *optional*): explicit betas in (0, 1], overriding the schedule; exactly
            `num_train_timesteps` of them (diffusers does not infer T from their length: it indexes past fewer betas
            and ignores extra ones, so a mismatch is refused).
        variance_type (`str`, defaults to `"fixed_small"`): σ_t² of p(x_{t−1} | x_t): `"fixed_small"` (β̃'_t),
            `"fixed_large"` (β'_t), their `_log` twins (same values, computed in log space), `"learned"` (the
            model outputs σ² in its second C channels) or `"learned_range"` (the model outputs v in [−1, 1];
            log σ² = (v+1)/2 · log β'_t + (1−v)/2 · log β̃'_t, Nichol & Dhariwal eq. 15).
        clip_sample (`bool`, defaults to `True`): clip x̂_0 to ±`clip_sample_range` (1.0, > 0 when used).
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"sample"` (x_0) or `"v_prediction"`.
        thresholding (`bool`, defaults to `False`): dynamic thresholding of x̂_0 (Saharia et al. 2022) with
            `dynamic_thresholding_ratio` (0.995, in [0, 1]) and `sample_max_value` (1.0, > 0; below 1 it is the
            threshold itself, as in diffusers); overrides `clip_sample`.
        timestep_spacing (`str`, defaults to `"leading"`): `"leading"`, `"trailing"` or `"linspace"`.
        steps_offset (`int`, defaults to 0): added to "leading" timesteps.
        rescale_betas_zero_snr (`bool`, defaults to `False`): zero terminal SNR (Lin et al. 2023); needs
            v_prediction or sample prediction.
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
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_spacing_options(timestep_spacing, steps_offset)
        check_x0_options(
            prediction_type, thresholding, dynamic_thresholding_ratio, sample_max_value, clip_sample_range, clip_sample
        )
        self._init_noise_schedule()
        self.one = torch.tensor(1.0, device="cpu")
        self.variance_type = variance_type
        self._init_training_schedule()
        self._init_full_schedule()

    def _alpha_prods(self, t: int, prev_t: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        return self.alphas_cumprod[t], alpha_prod_t_prev

    def step_variances(self, timestep: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(β̃'_t, β'_t): the posterior ("fixed_small") and the respaced β ("fixed_large") variance of the
        step from `timestep` on the current schedule (Nichol & Dhariwal 2021, §4)."""
        t = int(timestep)
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t, self._previous_t(t))
        beta = 1 - alpha_prod_t / alpha_prod_t_prev
        return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta, beta

    def _split_model_output(self, model_output: torch.Tensor, sample: torch.Tensor):
        channels = sample.shape[1]
        if self.variance_type in LEARNED_VARIANCE_TYPES:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"variance_type={self.variance_type!r} needs a model output with 2 * {channels} channels "
                    f"(mean and variance), got shape {tuple(model_output.shape)}"
                )
            return torch.split(model_output, channels, dim=1)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} must equal sample shape {tuple(sample.shape)} "
                f"for variance_type={self.variance_type!r}"
            )
        return model_output, None

    def _noise_std(self, t: int, predicted_variance: torch.Tensor | None) -> torch.Tensor:
        """σ_t of p(x_{t'} | x_t) on the current (possibly respaced) schedule; not used for the final step."""
        posterior_variance, beta = self.step_variances(t)
        # log of the variance is taken below: keep it off 0 (diffusers clamps the same way)
        posterior_variance = torch.clamp(posterior_variance, min=1e-20)
        if self.variance_type == "fixed_small":
            return posterior_variance**0.5
        elif self.variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior_variance))
        elif self.variance_type == "fixed_large":
            return beta**0.5
        elif self.variance_type == "fixed_large_log":
            return torch.exp(0.5 * torch.log(beta))
        elif self.variance_type == "learned":
            return predicted_variance**0.5
        elif self.variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2  # Nichol & Dhariwal 2021, eq. 15, v in [-1, 1]
            log_variance = frac * torch.log(beta) + (1 - frac) * torch.log(posterior_variance)
            return torch.exp(0.5 * log_variance)
        else:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {self.variance_type!r}")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple:
        """One ancestral step x_t -> x_{t−1} ~ p_θ(x_{t−1} | x_t) (Ho et al. 2020, Algorithm 2).

        Args:
            model_output (`torch.Tensor`): the network output at `timestep`, shaped like `sample` (2C channels
                for learned variances: mean part first).
            timestep (`int` or 0-d `torch.Tensor`): the current timestep, an entry of `self.timesteps` (the step
                goes to the next entry, as in diffusers; another timestep raises `ValueError`).
            sample (`torch.Tensor`): x_t, shape (B, C, ...).
            generator (`torch.Generator`, *optional*): source of the step's noise (drawn like diffusers).
            return_dict (`bool`, defaults to `True`): return a `SchedulerStepOutput` instead of a tuple.

        Returns:
            `SchedulerStepOutput(prev_sample, pred_original_sample)` or the tuple `(prev_sample, x̂_0)`.
        """
        t = int(timestep)
        prev_t = self._previous_t(t)
        model_output, predicted_variance = self._split_model_output(model_output, sample)

        # 1. ᾱ_t and ᾱ_{t'} of the (respaced) schedule; α'_t = ᾱ_t/ᾱ_{t'}, β'_t = 1 − α'_t
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t, prev_t)
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. x̂_0 from the model output (eq. 15), then clip or threshold it
        pred_original_sample, _ = predict_original_sample(
            model_output, sample, alpha_prod_t, self.config.prediction_type
        )
        pred_original_sample = clip_or_threshold(pred_original_sample, self.config, self.config.clip_sample)

        # 3. posterior mean μ̃_t(x_t, x̂_0) of q(x_{t'} | x_t, x_0) (eq. 7)
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 4. add σ_t z; diffusers draws z whenever t > 0, so do we, to keep generators in step
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            if prev_t >= 0:  # the final step returns the mean: z = 0 at t = 1 (Algorithm 2)
                prev_sample = prev_sample + self._noise_std(t, predicted_variance) * noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return SchedulerStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
