"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep ODE solver, for sampling
in few (≈ 10) model evaluations. Its measured accuracy and agreement with diffusers are in docs/schedulers.md."""

import math
from typing import Literal, get_args

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from .beta_schedules import BetaSchedule
from .common import (
    LEARNED_VARIANCE_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    NoiseScheduleMixin,
    PredictionType,
    SchedulerStepOutput,
    TimestepSpacing,
    VarianceType,
    check_choice,
    check_custom_timesteps,
    check_num_inference_steps,
    check_one_of,
    check_spacing_options,
    check_x0_options,
    dynamic_threshold,
    predict_original_sample,
)

FinalSigmasType = Literal["zero", "sigma_min"]
SolverType = Literal["midpoint", "heun"]
FINAL_SIGMAS_TYPES = get_args(FinalSigmasType)
SOLVER_TYPES = get_args(SolverType)


def solver_timesteps(
    timestep_spacing: str, num_train_timesteps: int, num_inference_steps: int, last_timestep: int, steps_offset: int
) -> np.ndarray:
    """Descending timesteps of the solver, spaced as diffusers' multistep solvers do: n + 1 points of which the
    last (t = 0) is dropped because the final step goes to σ = 0 instead. Only timesteps below `last_timestep`
    (where λ_t >= lambda_min_clipped) are used."""
    T, n = num_train_timesteps, num_inference_steps
    if timestep_spacing == "linspace":
        timesteps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
    elif timestep_spacing == "leading":
        step_ratio = last_timestep // (n + 1)
        if step_ratio == 0:
            raise ValueError(f"num_inference_steps must be < {last_timestep} for 'leading' spacing, got {n}")
        timesteps = (np.arange(n + 1) * step_ratio).round()[::-1][:-1] + steps_offset
    elif timestep_spacing == "trailing":
        timesteps = np.round(last_timestep - np.arange(n) * (T / n))
        timesteps = timesteps[timesteps > 0] - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    timesteps = timesteps.astype(np.int64)
    if len(np.unique(timesteps)) != len(timesteps) or timesteps.max() >= T:
        raise ValueError(
            f"num_inference_steps={n} with timestep_spacing={timestep_spacing!r} and steps_offset={steps_offset} "
            f"gives repeated or out-of-range timesteps {timesteps.tolist()}; use fewer steps"
        )
    return timesteps


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, descending."""
    ramp = np.linspace(0, 1, num_inference_steps)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


class DPMSolver2MScheduler(NoiseScheduleMixin, SchedulerMixin, ConfigMixin):
    """DPM-Solver++(2M): multistep second-order solver of the diffusion ODE in data prediction (Lu et al. 2022).

    With λ_t = log(α_t/σ_t) (α_t = √ᾱ_t, σ_t = √(1−ᾱ_t)), step i goes from t_{i−1} to t_i, h_i = λ_{t_i} − λ_{t_{i−1}}:
        first order (DDIM):  x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) x̂_0(t_{i−1})
        2M (Algorithm 2):    the same with x̂_0 replaced by D_i = (1 + 1/(2 r_i)) x̂_0(t_{i−1}) − 1/(2 r_i) x̂_0(t_{i−2}),
                             r_i = h_{i−1}/h_i ("midpoint"; "heun" is the other second-order variant in diffusers).
    One model evaluation per step (`order = 1`); the first step is first order (no history yet), and so is the
    last step when `lower_order_final` and fewer than 15 steps, or when it ends at σ = 0 (`final_sigmas_type`
    "zero"): there h = ∞ and the step returns x̂_0 itself.

    Config keys are diffusers' `DPMSolverMultistepScheduler`'s, restricted to what this solver implements:
    `algorithm_type` must be "dpmsolver++" and `solver_order` 1 or 2 (others raise rather than silently differ).
    `step` follows diffusers' algorithm step for step; the solver coefficients are computed in float64 (diffusers:
    float32), so a full loop agrees with diffusers closely but not bit for bit. `add_noise` uses the
    training ᾱ_t (diffusers uses the inference σ at that timestep; identical unless `use_karras_sigmas`).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the training noise schedule.
        solver_order (`int`, defaults to 2): 2 for DPM-Solver++(2M), 1 for first order (= DDIM, η = 0).
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"sample"` or `"v_prediction"`.
        thresholding (`bool`, defaults to `False`), dynamic_thresholding_ratio (0.995), sample_max_value (1.0):
            dynamic thresholding of x̂_0 (Saharia et al. 2022); pixel-space models only.
        algorithm_type (`str`, defaults to `"dpmsolver++"`): must be `"dpmsolver++"`.
        solver_type (`str`, defaults to `"midpoint"`): `"midpoint"` (Algorithm 2) or `"heun"`.
        lower_order_final (`bool`, defaults to `True`): first-order last step when fewer than 15 steps.
        euler_at_final (`bool`, defaults to `False`): always a first-order last step.
        use_karras_sigmas (`bool`, defaults to `False`): Karras et al. 2022 noise levels (ρ = 7), timesteps rounded.
        final_sigmas_type (`str`, defaults to `"zero"`): end at σ = 0 (`"zero"`) or at σ of t = 0 (`"sigma_min"`).
        lambda_min_clipped (`float`, defaults to −inf): skip timesteps whose λ_t is below this (cosine schedules).
        variance_type (`str`, *optional*): a DDPM variance type; for `"learned"`/`"learned_range"` the model's
            second C output channels (the variance) are dropped. The ODE solver uses no variance.
        timestep_spacing (`str`, defaults to `"trailing"`): `"trailing"`, `"linspace"` or `"leading"`. "trailing"
            (Lin et al. 2023) starts at t = T−1, where the sampler's N(0, I) input matches q(x_T), and spaces steps
            exactly T/n apart; "leading" starts below T−1, which costs accuracy on the cosine schedule.
            Configs from DDPM/DDIM say "leading": pass `timestep_spacing="trailing"` to `from_config` then.
        steps_offset (`int`, defaults to 0): added to "leading" timesteps.
        rescale_betas_zero_snr (`bool`, defaults to `False`): zero terminal SNR (Lin et al. 2023); ᾱ_T is then
            set to 2^−24 so that λ_T stays finite, as diffusers does.
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
        solver_order: Literal[1, 2] = 2,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver++"] = "dpmsolver++",
        solver_type: SolverType = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        final_sigmas_type: FinalSigmasType = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: VarianceType | None = None,
        timestep_spacing: TimestepSpacing = "trailing",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_options()
        self._init_noise_schedule()
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # keeps σ^VE_T and λ_T finite
        # VE noise level σ^VE_t = σ_t/α_t on the training grid (float32, as diffusers); λ_t = −log σ^VE_t
        self._ve_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(num_train_timesteps)[::-1].copy().astype(np.int64))
        self.sigmas = None
        self._begin_index = None
        self._reset_solver_state()

    def _check_options(self) -> None:
        config = self.config
        check_x0_options(
            config.prediction_type, config.thresholding, config.dynamic_thresholding_ratio, config.sample_max_value
        )
        check_choice("solver_order", config.solver_order, (1, 2))
        check_choice("algorithm_type", config.algorithm_type, ("dpmsolver++",))
        check_choice("solver_type", config.solver_type, SOLVER_TYPES)
        check_choice("final_sigmas_type", config.final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("variance_type", config.variance_type, (None,) + VARIANCE_TYPES)
        check_spacing_options(config.timestep_spacing, config.steps_offset)
        if math.isnan(config.lambda_min_clipped):
            raise ValueError("lambda_min_clipped must be a number (−inf turns the clipping off), got nan")

    def _reset_solver_state(self) -> None:
        self._step_index = None
        self._previous_x0 = None  # x̂_0(t_{i−2}) for the 2M update

    @property
    def step_index(self) -> int | None:
        """Index of the current timestep in `self.timesteps`; advances by one per `step`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index of the first timestep, set by pipelines that start mid-schedule (image-to-image)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Set the solver's timesteps: `num_inference_steps` in [1, T] spaced by `config.timestep_spacing` (or
        Karras σ's), or explicit strictly descending `timesteps` in [0, T). Pass exactly one of the two."""
        check_one_of(num_inference_steps, timesteps)
        T = self.config.num_train_timesteps
        ve_sigmas = self._ve_sigmas.double().numpy()
        log_ve_sigmas = np.log(ve_sigmas)
        if timesteps is not None:
            if self.config.use_karras_sigmas:
                raise ValueError("custom timesteps cannot be combined with use_karras_sigmas=True")
            schedule = check_custom_timesteps(timesteps, T)
            sigmas = ve_sigmas[schedule]
        elif self.config.use_karras_sigmas:
            check_num_inference_steps(num_inference_steps, T)
            sigmas = karras_sigmas(float(ve_sigmas[0]), float(ve_sigmas[-1]), num_inference_steps)
            schedule = np.interp(np.log(sigmas), log_ve_sigmas, np.arange(T)).round().astype(np.int64)
        else:
            check_num_inference_steps(num_inference_steps, T)
            # λ_min clipping (cosine schedules): count the timesteps whose λ_t = −log σ^VE_t is too low
            clipped = int((-log_ve_sigmas < self.config.lambda_min_clipped).sum())
            schedule = solver_timesteps(
                self.config.timestep_spacing, T, num_inference_steps, T - clipped, self.config.steps_offset
            )
            sigmas = ve_sigmas[schedule]
        final_sigma = 0.0 if self.config.final_sigmas_type == "zero" else float(ve_sigmas[0])
        self.sigmas = torch.from_numpy(np.append(sigmas, final_sigma).astype(np.float32))
        self.timesteps = torch.from_numpy(schedule.copy()).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(schedule)
        # α_i = 1/√(1+σ_i²), σ_i = σ^VE_i α_i, λ_i = −log σ^VE_i (λ = +∞ at σ = 0), in float64
        ve = self.sigmas.double().tolist()
        self._alpha = [1 / math.sqrt(1 + s**2) for s in ve]
        self._sigma = [s / math.sqrt(1 + s**2) for s in ve]
        self._lambda = [-math.log(s) if s > 0 else math.inf for s in ve]
        self._reset_solver_state()
        self._begin_index = None

    def index_for_timestep(self, timestep: int | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule; with duplicates the second one (as diffusers, so that a
        pipeline starting mid-schedule does not skip a σ)."""
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        candidates = (schedule_timesteps == timestep).nonzero()
        if len(candidates) == 0:
            raise ValueError(f"timestep {int(timestep)} is not in the scheduler's timesteps")
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """x̂_0 = x_θ(x_t, t), the quantity DPM-Solver++ integrates (Lu et al. 2022, §4)."""
        if self.config.variance_type in LEARNED_VARIANCE_TYPES:
            model_output = model_output[:, : sample.shape[1]]
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} must equal sample shape {tuple(sample.shape)} "
                f"(or have 2x the channels with variance_type 'learned'/'learned_range')"
            )
        alpha_prod = self._alpha[i] ** 2
        x0, _ = predict_original_sample(model_output, sample, alpha_prod, self.config.prediction_type)
        if self.config.thresholding:
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def _use_first_order(self, i: int) -> bool:
        if self.config.solver_order == 1 or self._previous_x0 is None:
            return True
        final = i == len(self.timesteps) - 1
        return final and (
            self.config.euler_at_final
            or (self.config.lower_order_final and len(self.timesteps) < 15)
            or self.config.final_sigmas_type == "zero"
        )

    def _update(self, x0: torch.Tensor, sample: torch.Tensor, i: int, first_order: bool) -> torch.Tensor:
        """x_{t_i} from x_{t_{i−1}}: the first-order (DDIM) or the 2M update of Lu et al. 2022, Algorithm 2."""
        alpha_t, sigma_t, sigma_s = self._alpha[i + 1], self._sigma[i + 1], self._sigma[i]
        h = self._lambda[i + 1] - self._lambda[i]
        if h == 0:  # e.g. Karras σ's ending at σ_min followed by final_sigmas_type="sigma_min": a zero-length step
            return sample
        phi = math.expm1(-h)  # e^{−h} − 1, = −1 when the step ends at σ = 0 (h = ∞)
        x_t = (sigma_t / sigma_s) * sample - (alpha_t * phi) * x0
        if first_order:
            return x_t
        r = (self._lambda[i] - self._lambda[i - 1]) / h
        d1 = (1.0 / r) * (x0 - self._previous_x0)  # D_1 = (x̂_0(t_{i−1}) − x̂_0(t_{i−2})) / r_i
        if self.config.solver_type == "midpoint":
            return x_t - 0.5 * (alpha_t * phi) * d1
        elif self.config.solver_type == "heun":
            return x_t + (alpha_t * (phi / h + 1.0)) * d1
        else:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {self.config.solver_type!r}")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerStepOutput | tuple:
        """One DPM-Solver++ step from `timestep` to the next entry of the schedule.

        Args:
            model_output (`torch.Tensor`): the network output at `timestep`, shaped like `sample`.
            timestep (`int` or 0-d `torch.Tensor`): the current timestep, an entry of `self.timesteps`; steps must
                be taken in order (the solver keeps the previous x̂_0).
            sample (`torch.Tensor`): x_t.
            generator (`torch.Generator`, *optional*): unused (the solver is deterministic); kept for pipelines.
            return_dict (`bool`, defaults to `True`): return a `SchedulerStepOutput` instead of a tuple.

        Returns:
            `SchedulerStepOutput(prev_sample, pred_original_sample)` or the tuple `(prev_sample,)`.
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            elif int(timestep) == int(self.timesteps[0]):
                # A loop over self.timesteps starts at index 0 even when the schedule repeats its first timestep
                # (Karras σ's on a cosine schedule map several σ's to t = T-1).
                self._step_index = 0
            else:
                self._step_index = self.index_for_timestep(timestep)
        i = self._step_index
        if i >= len(self.timesteps):
            raise ValueError(f"all {len(self.timesteps)} steps were taken; call set_timesteps to sample again")
        x0 = self._data_prediction(model_output, sample, i)
        # at least float32 for the update (as diffusers): the coefficients span orders of magnitude at few steps
        sample = sample.to(torch.promote_types(sample.dtype, torch.float32))
        prev_sample = self._update(x0, sample, i, self._use_first_order(i)).to(model_output.dtype)
        self._previous_x0 = x0
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerStepOutput(prev_sample=prev_sample, pred_original_sample=x0)
