"""Training losses of DDPM (Ho et al. 2020) and Improved DDPM (Nichol & Dhariwal 2021) as scheduler methods.

Everything here works on the FULL training schedule t ∈ [0, T) with x_{t−1} the previous step, whatever
`set_timesteps` chose for sampling: a model is trained on all T steps and only sampled on a respaced subset.
Mixed into `DDPMAncestralScheduler`, which provides `betas`, `alphas_cumprod`, `config`, `variance_type`,
`add_noise`, `get_velocity`, `_split_model_output` and `_train_timesteps`.
"""

import torch

from ..options import LOSS_TYPES
from .common import LEARNED_VARIANCE_TYPES, VARIANCE_TYPES, expand_to, predict_original_sample
from .losses import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    min_snr_weights,
    nats_to_bits_per_dim,
    normal_kl,
    standard_normal_prior_kl,
)


class DDPMTrainingMixin:
    """L_simple, the variational bound terms L_0..L_T in bits/dim, and the hybrid loss of Improved DDPM."""

    def _init_training_schedule(self) -> None:
        # float64 copies of the full schedule (Ho et al. eqs. 6-7); cast to the sample dtype when gathered.
        betas = self.betas.double()
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64, device=betas.device), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        # β̃_0 = 0: as improved-diffusion, use β̃_1 in log space at t = 0 (it only enters the decoder L_0).
        first = posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self._alphas_cumprod_64 = alphas_cumprod
        self._posterior_log_variance_clipped = torch.log(torch.cat([first, posterior_variance[1:]]))
        self._large_log_variance = torch.log(torch.cat([first, betas[1:]]))
        self._log_betas = torch.log(betas)
        self._posterior_mean_coef_x0 = betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)
        self._posterior_mean_coef_xt = (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)

    def _gather(self, values: torch.Tensor, timesteps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return expand_to(values.to(reference.dtype).to(reference.device)[timesteps], reference)

    def sample_training_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """t ~ Uniform{0, ..., T−1} for a batch, on the full training schedule (Ho et al., Algorithm 1)."""
        timesteps = torch.randint(0, self.config.num_train_timesteps, (batch_size,), generator=generator)
        return timesteps.to(device)

    def training_target(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network regresses for `config.prediction_type`: ε, x_0, or v = √ᾱ_t ε − √(1−ᾱ_t) x_0."""
        if self.config.prediction_type == "epsilon":
            return noise
        elif self.config.prediction_type == "sample":
            return sample
        elif self.config.prediction_type == "v_prediction":
            return self.get_velocity(sample, noise, timesteps)
        else:
            raise ValueError(f"unknown prediction_type {self.config.prediction_type!r}")

    def q_posterior_mean_log_variance(
        self, sample: torch.Tensor, noisy_sample: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (clipped) log-variance of q(x_{t−1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7)."""
        t = self._train_timesteps(timesteps, sample)
        mean = (
            self._gather(self._posterior_mean_coef_x0, t, sample) * sample
            + self._gather(self._posterior_mean_coef_xt, t, sample) * noisy_sample
        )
        return mean, self._gather(self._posterior_log_variance_clipped, t, sample)

    def _model_log_variance(self, variance_output, timesteps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self.variance_type in ("fixed_small", "fixed_small_log"):
            return self._gather(self._posterior_log_variance_clipped, timesteps, reference)
        elif self.variance_type in ("fixed_large", "fixed_large_log"):
            return self._gather(self._large_log_variance, timesteps, reference)
        elif self.variance_type == "learned":  # the output is σ² itself (diffusers' meaning of "learned")
            return torch.log(variance_output.clamp(min=1e-20))
        elif self.variance_type == "learned_range":  # Nichol & Dhariwal 2021, eq. 15
            frac = (variance_output + 1) / 2
            max_log = self._gather(self._log_betas, timesteps, reference)
            min_log = self._gather(self._posterior_log_variance_clipped, timesteps, reference)
            return frac * max_log + (1 - frac) * min_log
        else:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {self.variance_type!r}")

    def p_mean_log_variance(
        self, model_output: torch.Tensor, noisy_sample: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, log-variance and x̂_0 of p_θ(x_{t−1} | x_t) on the full schedule (x̂_0 is not clipped)."""
        t = self._train_timesteps(timesteps, noisy_sample)
        mean_output, variance_output = self._split_model_output(model_output, noisy_sample)
        alpha_prod_t = self._gather(self._alphas_cumprod_64, t, noisy_sample)
        x0, _ = predict_original_sample(mean_output, noisy_sample, alpha_prod_t, self.config.prediction_type)
        mean, _ = self.q_posterior_mean_log_variance(x0, noisy_sample, t)
        return mean, self._model_log_variance(variance_output, t, noisy_sample), x0

    def vlb_terms(
        self, model_output: torch.Tensor, sample: torch.Tensor, noisy_sample: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Per-example terms of the variational bound, in bits per dimension, shape (B,).

        For t > 0: L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) (Ho et al. 2020, eq. 5).
        For t = 0: L_0 = −log p_θ(x_0 | x_1) under the discretized Gaussian decoder (§3.3); `sample` must be data
        in [−1, 1] on the 256-level grid. Timesteps index the full training schedule [0, T).
        """
        t = self._train_timesteps(timesteps, sample)
        model_mean, model_log_variance, _ = self.p_mean_log_variance(model_output, noisy_sample, t)
        true_mean, true_log_variance = self.q_posterior_mean_log_variance(sample, noisy_sample, t)
        kl = nats_to_bits_per_dim(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance))
        decoder_nll = -nats_to_bits_per_dim(
            discretized_gaussian_log_likelihood(sample, model_mean, 0.5 * model_log_variance)
        )
        return torch.where(t == 0, decoder_nll, kl)

    def prior_bpd(self, sample: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per example in bits/dim, shape (B,). No parameters: it measures how
        close the schedule's last step comes to pure noise (~1e-5 bits/dim for the linear T = 1000 schedule)."""
        t = torch.full((sample.shape[0],), self.config.num_train_timesteps - 1, device=sample.device)
        alpha_prod = self._gather(self._alphas_cumprod_64, t, sample)
        return nats_to_bits_per_dim(standard_normal_prior_kl(alpha_prod.sqrt() * sample, torch.log(1 - alpha_prod)))

    def loss_simple(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """L_simple (Ho et al. 2020, eq. 14): mean squared error between the mean part of the output and the
        `training_target` (ε, x_0 or v), averaged over all elements; with `snr_gamma` each example is weighted by
        Min-SNR-γ (Hang et al. 2023; γ = 5 in the paper)."""
        mean_output, _ = self._split_model_output(model_output, sample)
        target = self.training_target(sample, noise, timesteps)
        if snr_gamma is None:
            return torch.mean((mean_output.float() - target.float()) ** 2)
        t = self._train_timesteps(timesteps, sample)
        alpha_prod_t = self._alphas_cumprod_64.to(sample.device)[t]
        weights = min_snr_weights(alpha_prod_t, snr_gamma, self.config.prediction_type).float()
        return torch.mean(weights * mean_flat((mean_output.float() - target.float()) ** 2))

    def training_losses(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        loss_type: str = "simple",
        vlb_weight: float = 0.001,
        snr_gamma: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training loss for one batch, where `model_output = model(add_noise(sample, noise, t), t)`.

        Args:
            model_output (`torch.Tensor`): network output, (B, C, ...) or (B, 2C, ...) for learned variances.
            sample (`torch.Tensor`): clean data x_0 in [−1, 1], (B, C, ...).
            noise (`torch.Tensor`): the ε used to make x_t.
            timesteps (`torch.Tensor`): (B,) integers in [0, T) on the full training schedule.
            loss_type (`str`, defaults to `"simple"`): `"simple"` (L_simple) or `"hybrid"` (Nichol & Dhariwal
                2021, eq. 16: L_simple + λ L_vlb). Hybrid needs variance_type `"learned_range"` (or `"learned"`):
                with a fixed variance L_vlb has nothing to train, so it raises.
            vlb_weight (`float`, defaults to 0.001): λ. L_vlb = Σ_t L_t is estimated as T · mean_batch(L_t) in
                bits/dim, so with T = 1000 and λ = 0.001 each example's L_t gets weight 1, as in improved-diffusion.
                The gradient of L_vlb reaches only the variance output: the mean is detached (stop-gradient).
            snr_gamma (`float`, *optional*): weight L_simple per example by Min-SNR-γ (Hang et al. 2023); None: off.

        Returns:
            `dict` with scalar tensors `loss`, `loss_simple` and `loss_vlb` (0 for "simple").
        """
        check_loss_options(loss_type, vlb_weight, self.variance_type)
        timesteps = self._train_timesteps(timesteps, sample)
        loss_simple = self.loss_simple(model_output, sample, noise, timesteps, snr_gamma=snr_gamma)
        if loss_type == "simple":
            zero = torch.zeros((), device=loss_simple.device, dtype=loss_simple.dtype)
            return {"loss": loss_simple, "loss_simple": loss_simple, "loss_vlb": zero}
        elif loss_type == "hybrid":
            mean_output, variance_output = self._split_model_output(model_output, sample)
            frozen_output = torch.cat([mean_output.detach(), variance_output], dim=1)
            noisy_sample = self.add_noise(sample, noise, timesteps)
            vlb = self.vlb_terms(frozen_output, sample, noisy_sample, timesteps)
            loss_vlb = vlb.float().mean() * self.config.num_train_timesteps
            return {"loss": loss_simple + vlb_weight * loss_vlb, "loss_simple": loss_simple, "loss_vlb": loss_vlb}
        else:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def check_loss_options(loss_type: str, vlb_weight: float, variance_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if vlb_weight < 0:
        raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
    if loss_type == "hybrid" and variance_type not in LEARNED_VARIANCE_TYPES:
        raise ValueError(
            f"loss_type='hybrid' trains a learned variance: it needs variance_type in {LEARNED_VARIANCE_TYPES}, "
            f"got {variance_type!r} (use loss_type='simple' with fixed variances)"
        )
