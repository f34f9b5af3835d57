"""Unconditional pixel-space diffusion (the DDPM family): Ho et al. 2020, Algorithm 2, with any scheduler."""

from __future__ import annotations

import torch
from diffusers import ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .pixel_diffusion import PixelDiffusionPipeline, with_sampling_arguments


class UnconditionalDiffusionPipeline(PixelDiffusionPipeline):
    r"""Sample images from an unconditional pixel-space diffusion model.

    Components:
        unet ([`UNet2DModel`]): predicts ε, x₀ or v (as the scheduler's `prediction_type` says) from (x_t, t).
            A learned-variance model returns 2·C channels; the scheduler splits them.
        scheduler ([`SchedulerMixin`]): any of ours (`DDPMAncestralScheduler`, `DDIMEtaScheduler`,
            `DPMSolver2MScheduler`) or of diffusers', swapped in with `Scheduler.from_config(pipe.scheduler.config)`.
    """

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    @with_sampling_arguments
    def __call__(self, batch_size: int = 1, **sampling) -> ImagePipelineOutput | tuple:
        r"""Generate `batch_size` images.

        Args:
            batch_size (`int`, defaults to 1): number of images, ≥ 1.
        """
        return self._generate(lambda x_t, t: self.unet(x_t, t).sample, batch_size, **sampling)
