"""Pieces every pixel-space pipeline shares: input checks, scheduler-step kwargs, step callbacks, postprocessing."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def unet_sample_shape(unet, batch_size: int) -> tuple[int, int, int, int]:
    """(B, C, H, W) of a pixel-space sample from the UNet's config (`sample_size` an int or (H, W))."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (batch_size, unet.config.in_channels, height, width)


def check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_output_type(output_type: str, allowed: tuple[str, ...] = OUTPUT_TYPES) -> None:
    if output_type not in allowed:
        raise ValueError(f"output_type must be one of {allowed}, got {output_type!r}")


def check_batch_and_steps(batch_size: int, num_inference_steps: int, output_type: str) -> None:
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_inference_steps", num_inference_steps)
    check_output_type(output_type)


def check_generator(generator, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"a list of generators must have batch_size={batch_size} entries, got {len(generator)}")
    if generator is not None and not isinstance(generator, (torch.Generator, list)):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_latents(latents: torch.Tensor | None, shape: tuple[int, ...], name: str = "latents") -> None:
    if latents is not None and tuple(latents.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(latents.shape)}")


def check_callback_inputs(
    callback_on_step_end_tensor_inputs: list[str] | None, allowed: list[str], callback_on_step_end=None
) -> None:
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
    unknown = [k for k in (callback_on_step_end_tensor_inputs or []) if k not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs must be a subset of {allowed}, got unknown {unknown}")


def extra_step_kwargs(scheduler, generator, eta: float | None = None) -> dict:
    """Pass `generator` / `eta` only to schedulers whose `step` takes them (diffusers' schedulers differ here)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "generator" in accepted:
        kwargs["generator"] = generator
    if eta is not None and "eta" in accepted:
        kwargs["eta"] = eta
    return kwargs


def run_step_callback(pipe, callback: Callable | None, step_index: int, t, tensor_inputs: list[str], local_vars: dict):
    """diffusers' `callback_on_step_end(pipe, i, t, kwargs) -> dict` protocol; returned tensors replace ours."""
    if callback is None:
        return local_vars
    kwargs = {name: local_vars[name] for name in tensor_inputs}
    outputs = callback(pipe, step_index, t, kwargs) or {}
    return {**local_vars, **{k: v for k, v in outputs.items() if k in tensor_inputs}}


_IMAGE_PROCESSOR = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=True)


def postprocess_images(images: torch.Tensor, output_type: str) -> torch.Tensor | np.ndarray | list:
    """Model-space images in [-1, 1] ([B, C, H, W]) → `pt` in [0, 1], `np` [B, H, W, C] in [0, 1], or PIL images.

    One- and three-channel images both work (PIL mode L or RGB). `latent` returns the tensor untouched.
    """
    if output_type == "latent":
        return images
    return _IMAGE_PROCESSOR.postprocess(images.float().cpu(), output_type=output_type)


def sample_pixel_diffusion(
    pipe,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    *,
    num_inference_steps: int,
    generator,
    latents: torch.Tensor | None,
    eta: float,
    timesteps: list[int] | None = None,
    guidance_fn,
    guidance_strength,
    callback_on_step_end: Callable | None,
    tensor_inputs: list[str],
) -> torch.Tensor:
    """The reverse process every pixel pipeline shares (Ho et al. 2020, Algorithm 2, any scheduler).

    `model_fn(x_t, t)` is the (possibly guided) denoiser taking and returning the scheduler's dtype. x_t stays in
    fp32 (fp64 for an fp64 model) even when the network runs in bf16/fp16: low-precision x_t accumulates rounding
    error over the steps, the network does not need fp32. Returns x_0 in about [-1, 1].
    """
    from .guidance import loss_guided_model_output  # guidance.py builds on these helpers, not the reverse

    device = pipe._execution_device
    dtype = state_dtype(pipe.unet.dtype)
    scheduler = pipe.scheduler
    # 1. The (possibly respaced, or the caller's own) timesteps t_N > … > t_1. First: σ-space schedulers (Euler,
    #    Heun, LMS, ...) compute init_noise_sigma from them (σ_max of the chosen grid, not of the training one).
    set_scheduler_timesteps(scheduler, num_inference_steps, timesteps, device)
    # 2. x_T ~ N(0, I), scaled to the first step's noise level (1 for DDPM/DDIM, σ_max for σ-space schedulers).
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    latents = latents.to(device=device, dtype=dtype) * scheduler.init_noise_sigma
    step_kwargs = extra_step_kwargs(scheduler, generator, eta)
    # 3. Predict (pushing x_t down ∇ loss first when loss-guided), then let the scheduler take x_t → x_{t-1}.
    for i, t in enumerate(pipe.progress_bar(scheduler.timesteps)):
        model_output, latents = loss_guided_model_output(
            model_fn, scheduler, latents, t, i, guidance_fn, guidance_strength
        )
        latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
        latents = run_step_callback(pipe, callback_on_step_end, i, t, tensor_inputs, {"latents": latents})["latents"]
    return latents


def set_scheduler_timesteps(scheduler, num_inference_steps: int, timesteps: list[int] | None, device=None) -> None:
    """`scheduler.set_timesteps(num_inference_steps)`, or with the caller's `timesteps` (then the step count is
    `len(timesteps)` and `num_inference_steps` is ignored, as in diffusers' `retrieve_timesteps`)."""
    if timesteps is None:
        scheduler.set_timesteps(num_inference_steps, device=device)
        return
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(
            f"timesteps: {type(scheduler).__name__}.set_timesteps does not take custom timesteps; use one of ours "
            "(DPMSolver2MScheduler, DDIMEtaScheduler, DDPMAncestralScheduler) or pass num_inference_steps instead"
        )
    if isinstance(timesteps, (torch.Tensor, np.ndarray)):  # e.g. scheduler.timesteps, or a saved array
        timesteps = timesteps.tolist()
    if not isinstance(timesteps, (list, tuple)) or not all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in timesteps
    ):
        raise TypeError(f"timesteps must be a list of ints, got {timesteps!r}")
    scheduler.set_timesteps(timesteps=[int(t) for t in timesteps], device=device)


def state_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the scheduler state x_t for a network of `model_dtype`."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32
