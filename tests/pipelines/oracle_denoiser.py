"""The exact denoiser of a finite data set, as a stand-in UNet for testing samplers without training.

For data = N images x_i (equally likely), the optimal ε-prediction at noise level ᾱ_t is ε̂ = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t)
with x̂_0 = Σ_i w_i x_i, w = softmax_i(−‖x_t − √ᾱ_t x_i‖² / 2(1−ᾱ_t)) (the posterior mean E[x_0 | x_t]). A correct
sampler driven by it ends on (or very near) one of the x_i; a broken one (wrong initial scale, wrong timesteps,
wrong σ) does not. Fractional timesteps (σ-space schedulers) interpolate log σ between the integer steps.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

from custom_pipelines.data import ImageTransform, load_image_dataset


class OracleDenoiser(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, images: int = 64, sample_size: int = 16, in_channels: int = 1, out_channels: int = 1,
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "squaredcos_cap_v2", num_class_embeds: int | None = None,
                 class_embed_type: str | None = None):  # fmt: skip
        super().__init__()
        dataset = load_image_dataset("digits", resolution=sample_size)
        transform = ImageTransform(sample_size, channels=in_channels)
        self.register_buffer("data", torch.stack([transform(dataset[i]["image"]) for i in range(images)]))
        schedule = DDPMScheduler(num_train_timesteps, beta_start, beta_end, beta_schedule)  # the same ᾱ_t
        alphas_cumprod = schedule.alphas_cumprod.double()
        self.input_stds: list[float] = []
        self.register_buffer("log_sigmas", (((1 - alphas_cumprod) / alphas_cumprod).sqrt()).log())

    def alpha_prod(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(batch).clamp(0, len(self.log_sigmas) - 1)
        low = t.floor().long()
        high = (low + 1).clamp(max=len(self.log_sigmas) - 1)
        frac = t - low
        log_sigma = (1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[high]
        return 1 / (1 + (2 * log_sigma).exp())  # ᾱ = 1 / (1 + σ²)

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        """ε̂(x_t, t); `class_labels` (a class-conditional UNet's argument) is ignored: the oracle is class-blind."""
        self.input_stds.append(float(sample.float().std()))  # the network input's scale, step by step
        x_t = sample.double()
        alpha = self.alpha_prod(timestep, x_t.shape[0]).reshape(-1, 1, 1, 1)
        data = self.data.double()
        distances = ((x_t[:, None] - alpha.sqrt()[:, None] * data[None]) ** 2).flatten(2).sum(-1)  # (B, N)
        weights = torch.softmax(-distances / (2 * (1 - alpha.reshape(-1, 1))), dim=1)
        x0 = torch.einsum("bn,nchw->bchw", weights, data)
        eps = ((x_t - alpha.sqrt() * x0) / (1 - alpha).sqrt()).to(sample.dtype)
        return UNet2DOutput(sample=eps) if return_dict else (eps,)


def nearest_data_rmse(oracle: OracleDenoiser, images: torch.Tensor) -> torch.Tensor:
    """Per image (in [0, 1], NCHW), the RMSE to its nearest data image: ≈ 0 for a working sampler."""
    data = (oracle.data.float() + 1) / 2
    distances = ((images.float()[:, None] - data[None]) ** 2).flatten(2).mean(-1)
    return distances.min(dim=1).values.sqrt()
