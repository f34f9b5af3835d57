"""Pieces our pipelines share: input checks, scheduler-step kwargs, step callbacks, postprocessing, image
resizing / grayscale, and seeded batch sampling of any pipeline (used by the timestep search and the evaluation)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

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
    if latents is None:
        return
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {tuple(shape)}, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    if not latents.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {latents.dtype}")
    if not torch.isfinite(latents).all():
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(latents)).sum())} NaN/inf values")


def uint8_to_float(image):
    """uint8 numpy images (or a list of them) → float32 in [0, 1]; anything else as it is. diffusers'
    `VaeImageProcessor` takes numpy values as they are, so 0–255 would pass for [0, 1] values."""
    if isinstance(image, (list, tuple)):
        return [uint8_to_float(item) for item in image]
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image


def check_image_values(name: str, image) -> None:
    """numpy / torch images (or a list of them) must hold finite values in [0, 1]; PIL images and uint8 arrays pass
    (convert those with `uint8_to_float` before the image processor). diffusers' image processor only warns, and NaN
    passes a plain min/max comparison."""
    for item in image if isinstance(image, (list, tuple)) else [image]:
        if not isinstance(item, (np.ndarray, torch.Tensor)) or (
            isinstance(item, np.ndarray) and item.dtype == np.uint8
        ):
            continue
        values = torch.as_tensor(item).detach()
        if values.numel() == 0:
            continue
        finite = torch.isfinite(values) if values.is_floating_point() else torch.ones_like(values, dtype=torch.bool)
        if not bool(finite.all()):
            raise ValueError(f"{name} must hold finite values in [0, 1], got {int((~finite).sum())} NaN/inf values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name} as a numpy array or torch tensor must hold floats in [0, 1] (or uint8 numpy), got values "
                f"in [{low:.3g}, {high:.3g}]"
            )


def check_eta(eta) -> None:
    """DDIM's η (Song et al. 2021 eq. 16): 0 is deterministic DDIM, 1 the DDPM posterior's variance."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")


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


# ----- image helpers (differentiable; the evaluation's preprocessing uses the same ones) ---------------------------
# ITU-R BT.601 luma weights, the ones PIL's `convert("L")` uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """`[B, 1 or 3, H, W]` → `[B, 1, H, W]` with the BT.601 luma weights."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] == 3:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device)
        return (images * weights[None, :, None, None]).sum(dim=1, keepdim=True)
    raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize with antialiasing to `resolution × resolution` (a no-op when already that size)."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


# ----- seeded batch sampling of any pipeline ------------------------------------------------------------------------
def as_nchw_tensor(images) -> torch.Tensor:
    """Pipeline output (`pt` NCHW tensor, `np` NHWC array or list of PIL images) → float `[B, C, H, W]` on CPU."""
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu()
    if isinstance(images, np.ndarray):
        array = images if images.ndim == 4 else images[..., None]
    elif isinstance(images, (list, tuple)) and images and hasattr(images[0], "mode"):  # PIL images
        array = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in images])
        array = array if array.ndim == 4 else array[..., None]
    else:
        raise ValueError(f"cannot read pipeline images of type {type(images).__name__}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 3, 1, 2)


def call_kwargs(pipe, **kwargs) -> dict:
    """Drop `None` values, and refuse options the pipeline's `__call__` does not take (no silent ignoring)."""
    parameters = inspect.signature(pipe.__call__).parameters
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unknown = [k for k in kwargs if k not in parameters and not takes_var_kwargs]
    if unknown and unknown != ["batch_size"]:
        raise ValueError(f"{type(pipe).__name__}.__call__ does not take {sorted(set(unknown) - {'batch_size'})}")
    # Pipelines that size the batch from their conditioning (e.g. class_labels) have no batch_size argument.
    return {k: v for k, v in kwargs.items() if k not in unknown}


def sample_images(
    pipe,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    class_labels: Sequence[int] | None = None,
    class_labels_kwarg: str = "class_labels",
    **pipeline_kwargs,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield `(images [B, C, H, W] in [0, 1] on CPU, labels [B] or None)` batches, `num_samples` in all.

    Sample i is drawn with its own `torch.Generator` whose seed comes from a master generator seeded with `seed`,
    so the images do not depend on `batch_size`. `class_labels` are cycled to `num_samples` (pass `range(10)` for
    balanced classes) and given to the pipeline as `class_labels_kwarg`.
    """
    seeds = per_sample_seeds(num_samples, batch_size, seed)
    labels = None
    if class_labels is not None:
        base = torch.as_tensor(list(class_labels), dtype=torch.long)
        if base.ndim != 1 or base.numel() == 0:
            raise ValueError(f"class_labels must be a non-empty sequence of ints, got {class_labels!r}")
        labels = base.repeat((num_samples + base.numel() - 1) // base.numel())[:num_samples]
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        generators = [torch.Generator().manual_seed(s) for s in seeds[start:stop]]
        batch_labels = labels[start:stop] if labels is not None else None
        extra = {class_labels_kwarg: batch_labels.tolist()} if batch_labels is not None else {}
        kwargs = call_kwargs(pipe, batch_size=stop - start, **extra, **pipeline_kwargs)
        yield output_images(pipe(generator=generators, output_type="pt", **kwargs)), batch_labels


def per_sample_seeds(num_samples: int, batch_size: int, seed: int) -> list[int]:
    """The seed of each sample's own generator, drawn from a master generator seeded with `seed`: what every
    sampler of ours uses (`sample_images`, the sample and evaluate commands), so sample i is the same image whatever
    the batch size, and `sample --seed s` draws the images `evaluate --seed s` scores."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    return torch.randint(0, 2**62, (num_samples,), generator=torch.Generator().manual_seed(seed)).tolist()


def output_images(output) -> torch.Tensor:
    """A pipeline's `output_type="pt"` result (output object or tuple) → images [B, C, H, W] in [0, 1]."""
    images = output.images if hasattr(output, "images") else output[0]
    return as_nchw_tensor(images).clamp(0, 1)
