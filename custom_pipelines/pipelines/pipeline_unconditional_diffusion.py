"""Unconditional pixel-space diffusion (the DDPM family): Ho et al. 2020, Algorithm 2, with any scheduler."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .guidance import GuidanceFn, GuidanceStrength, check_loss_guidance
from .utils import (
    check_batch_and_steps,
    check_callback_inputs,
    check_generator,
    check_latents,
    postprocess_images,
    sample_pixel_diffusion,
    state_dtype,
    unet_sample_shape,
)


class UnconditionalDiffusionPipeline(DiffusionPipeline):
    r"""Sample images from an unconditional pixel-space diffusion model.

    Components:
        unet ([`UNet2DModel`]): predicts ε, x₀ or v (as the scheduler's `prediction_type` says) from (x_t, t).
            A learned-variance model returns 2·C channels; the scheduler splits them.
        scheduler ([`SchedulerMixin`]): any of ours (`DDPMAncestralScheduler`, `DDIMEtaScheduler`,
            `DPMSolver2MScheduler`) or of diffusers', swapped in with `Scheduler.from_config(pipe.scheduler.config)`.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return unet_sample_shape(self.unet, batch_size)

    def check_inputs(
        self,
        batch_size,
        num_inference_steps,
        generator,
        latents,
        output_type,
        callback,
        tensor_inputs,
        guidance_fn=None,
        guidance_strength=1.0,
    ):
        check_batch_and_steps(batch_size, num_inference_steps, output_type)
        check_generator(generator, batch_size)
        check_latents(latents, self._sample_shape(batch_size))
        check_callback_inputs(tensor_inputs, self._callback_tensor_inputs, callback)
        check_loss_guidance(guidance_fn, guidance_strength, self.scheduler)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        guidance_fn: GuidanceFn | None = None,
        guidance_strength: GuidanceStrength = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate `batch_size` images.

        Args:
            batch_size (`int`, defaults to 1): number of images, ≥ 1.
            num_inference_steps (`int`, defaults to 50): denoising steps (network evaluations for first-order
                schedulers), 1 ≤ steps ≤ the scheduler's `num_train_timesteps`.
            timesteps (`list[int]`, *optional*): strictly descending timesteps in [0, num_train_timesteps) to use
                instead of `num_inference_steps` evenly spaced ones (diffusers' convention), e.g. a schedule from
                `optimize_timesteps`. The last one steps to the clean image. Needs a scheduler whose `set_timesteps`
                takes `timesteps` (all of ours).
            generator (`torch.Generator` or list of them): makes sampling deterministic; a list gives one per image,
                so a batch equals the same images made one by one.
            latents (`torch.Tensor` of shape `(batch_size, C, H, W)`): start noise x_T instead of a fresh draw.
            eta (`float`, defaults to 0.0): DDIM's η, passed only to schedulers whose `step` takes it.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C in [0, 1]), `"pt"`
                (B, C, H, W in [0, 1]) or `"latent"` (raw model-space tensor in about [-1, 1]).
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`): `fn(pipe, step_index, timestep, tensors: dict) -> dict`, called after
                every step; tensors it returns (e.g. a modified `latents`) replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to it.
            guidance_fn (`Callable`, *optional*): loss guidance, `fn(x0_pred [B, C, H, W] in about [-1, 1]) -> loss`
                (scalar or `[B]`, differentiable). Before every scheduler step x_t is pushed down its gradient,
                x_t ← x_t − s ∇_{x_t} loss, through the model's x̂_0 (see `pipelines/guidance.py`). Needs a
                variance-preserving scheduler. None (default) samples exactly as without guidance.
            guidance_strength (`float` or `Callable`, defaults to 1.0): s ≥ 0, or `fn(step_index, t) -> s`.
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            batch_size,
            num_inference_steps,
            generator,
            latents,
            output_type,
            callback_on_step_end,
            tensor_inputs,
            guidance_fn,
            guidance_strength,
        )
        model_dtype, dtype = self.unet.dtype, state_dtype(self.unet.dtype)

        def model_fn(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.unet(model_input.to(model_dtype), t).sample.to(dtype)

        latents = sample_pixel_diffusion(
            self,
            model_fn,
            self._sample_shape(batch_size),
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            generator=generator,
            latents=latents,
            eta=eta,
            guidance_fn=guidance_fn,
            guidance_strength=guidance_strength,
            callback_on_step_end=callback_on_step_end,
            tensor_inputs=tensor_inputs,
        )

        # [-1, 1] → requested output type.
        images = postprocess_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
