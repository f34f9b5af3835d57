"""The body every pixel-space diffusion pipeline shares, written once: checks, the reverse process, the output.

A pipeline only supplies its denoiser `model_fn(x_t, t)` (the plain UNet, or the classifier-free-guidance wrapper)
and its own conditioning arguments; `with_sampling_arguments` gives its `__call__` the shared ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from custom_pipelines.distill.guidance_embedding import check_student_steps
from custom_pipelines.hub.mixin import HubPipelineMixin
from custom_pipelines.lora.mixin import LoraMixin

from .guidance import GuidanceFn, GuidanceStrength, check_loss_guidance, loss_guided_model_output
from .utils import (
    check_batch_and_steps,
    check_callback_inputs,
    check_eta,
    check_generator,
    check_latents,
    extra_step_kwargs,
    postprocess_images,
    run_step_callback,
    set_scheduler_timesteps,
    state_dtype,
    unet_sample_shape,
)

# The `Args:` entries every pixel pipeline's `__call__` docstring ends with, indented as they appear there.
SAMPLING_ARGS_DOC = """\
            num_inference_steps (`int`, defaults to 50): denoising steps (network evaluations for first-order
                schedulers), 1 ≤ steps ≤ the scheduler's `num_train_timesteps`.
            timesteps (`list[int]`, *optional*): strictly descending timesteps in [0, num_train_timesteps) to use
                instead of `num_inference_steps` evenly spaced ones (diffusers' convention), e.g. a schedule from
                `optimize_timesteps`. The last one steps to the clean image. Needs a scheduler whose `set_timesteps`
                takes `timesteps` (all of ours).
            generator (`torch.Generator` or list of them): makes sampling deterministic; a list gives one per image,
                so a batch equals the same images made one by one.
            latents (`torch.Tensor` of shape `(B, C, H, W)`, B images): start noise x_T instead of a fresh draw.
            eta (`float`, defaults to 0.0): DDIM's η, passed only to schedulers whose `step` takes it.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C in [0, 1]), `"pt"`
                (B, C, H, W in [0, 1]) or `"latent"` (raw model-space tensor in about [-1, 1]).
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`): `fn(pipe, step_index, timestep, tensors: dict) -> dict`, called after
                every step; a `latents` it returns replaces the pipeline's. It may read `pipe.num_timesteps` (and
                the guidance properties); setting `pipe._interrupt = True` stops sampling after this step.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to it.
            guidance_fn (`Callable`, *optional*): loss guidance, `fn(x0_pred [B, C, H, W] in about [-1, 1]) -> loss`
                (scalar or `[B]`, differentiable). Before every scheduler step x_t is pushed down its gradient,
                x_t ← x_t − s ∇_{x_t} loss, through the model's x̂_0 (see `pipelines/guidance.py`). Needs a
                variance-preserving scheduler. None (default) samples exactly as without guidance.
            guidance_strength (`float` or `Callable`, defaults to 1.0): s ≥ 0, or `fn(step_index, t) -> s`.
"""


class PixelDiffusionPipeline(LoraMixin, HubPipelineMixin, DiffusionPipeline):
    r"""Base of our pixel-space diffusion pipelines (Ho et al. 2020, Algorithm 2, with any scheduler).

    Subclasses register `unet` and `scheduler` and call `_generate(model_fn, batch_size, **sampling)`. The runtime
    properties are diffusers' (`num_timesteps`, `interrupt`), set afresh by every call for step callbacks to read.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    @property
    def num_timesteps(self) -> int:
        """Number of denoising steps of the current (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Whether a step callback asked to stop (`pipe._interrupt = True`); reset at the start of every call."""
        return self._interrupt

    def _sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return unet_sample_shape(self.unet, batch_size)

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        generator,
        latents: torch.Tensor | None,
        output_type: str,
        callback: Callable | None,
        tensor_inputs: list[str],
        guidance_fn: GuidanceFn | None = None,
        guidance_strength: GuidanceStrength = 1.0,
    ) -> None:
        """Validate the sampling arguments (ValueError naming the argument, its range and value)."""
        check_batch_and_steps(batch_size, num_inference_steps, output_type)
        check_student_steps(self.scheduler, num_inference_steps)  # a distilled student's grid (LCMScheduler)
        check_generator(generator, batch_size)
        check_latents(latents, self._sample_shape(batch_size))
        check_callback_inputs(tensor_inputs, self._callback_tensor_inputs, callback)
        check_loss_guidance(guidance_fn, guidance_strength, self.scheduler)

    def _start(self, timesteps, batch_size: int, generator, latents, device, dtype) -> tuple[torch.Tensor, ...]:
        """The timesteps to run and the sample at the first of them: all of them, from x_T ~ N(0, I) (or the given
        `latents`) scaled to the first step's noise level (1 for DDPM/DDIM, σ_max for σ-space schedulers)."""
        if latents is None:
            latents = randn_tensor(self._sample_shape(batch_size), generator=generator, device=device, dtype=dtype)
        return timesteps, latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def _generate(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        batch_size: int,
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
        """Sample `batch_size` images with the denoiser `model_fn(x_t, t) -> model output` (in the network's dtype);
        the other arguments are the pipelines' `__call__` ones (`SAMPLING_ARGS_DOC`)."""
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            batch_size, num_inference_steps, generator, latents, output_type, callback_on_step_end, tensor_inputs,
            guidance_fn, guidance_strength,
        )  # fmt: skip
        check_eta(eta)
        self._interrupt = False
        device, scheduler = self._execution_device, self.scheduler
        # x_t stays fp32 (fp64 for an fp64 model) even when the network runs in bf16/fp16: low-precision x_t
        # accumulates rounding error over the steps, the network does not need fp32.
        model_dtype, dtype = self.unet.dtype, state_dtype(self.unet.dtype)

        def denoiser(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model_fn(model_input.to(model_dtype), t).to(dtype)

        # 1. The (possibly respaced, or the caller's own) timesteps t_N > … > t_1. First: σ-space schedulers (Euler,
        #    Heun, LMS, ...) compute init_noise_sigma from them (σ_max of the chosen grid, not of the training one).
        set_scheduler_timesteps(scheduler, num_inference_steps, timesteps, device)
        # 2. x_T ~ N(0, I) at the first step's noise level (img2img starts later, from a noised image: `_start`).
        run_timesteps, latents = self._start(scheduler.timesteps, batch_size, generator, latents, device, dtype)
        self._num_timesteps = len(run_timesteps)
        step_kwargs = extra_step_kwargs(scheduler, generator, eta)
        # 3. Predict (pushing x_t down ∇ loss first when loss-guided), then let the scheduler take x_t → x_{t-1};
        #    the step callback may replace x_{t-1} or stop the loop.
        for i, t in enumerate(self.progress_bar(run_timesteps)):
            if self.interrupt:
                break
            model_output, latents = loss_guided_model_output(
                denoiser, scheduler, latents, t, i, guidance_fn, guidance_strength
            )
            latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            tensors = run_step_callback(self, callback_on_step_end, i, t, tensor_inputs, {"latents": latents})
            latents = tensors["latents"]
        # 4. x_0 in about [-1, 1] → the requested output type.
        images = postprocess_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def with_sampling_arguments(call: Callable) -> Callable:
    """Complete a pipeline's `__call__(self, <its conditioning>, **sampling)` with the sampling arguments of
    `PixelDiffusionPipeline._generate`, so they are written once: its signature (what `inspect.signature`, tools
    and IDEs read) and docstring list them after the pipeline's own, and positional calls bind in that order."""
    own = inspect.signature(call)
    conditioning = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = list(inspect.signature(PixelDiffusionPipeline._generate).parameters.values())[3:]  # after batch_size
    signature = own.replace(parameters=conditioning + shared)

    @functools.wraps(call)
    def wrapper(*args, **kwargs):
        return call(**signature.bind(*args, **kwargs).arguments)

    wrapper.__signature__ = signature
    wrapper.__doc__ = call.__doc__.rstrip() + "\n" + SAMPLING_ARGS_DOC
    return wrapper
