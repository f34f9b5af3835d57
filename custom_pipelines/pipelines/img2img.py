"""Image-to-image and inpainting pieces shared by the pixel and the latent pipelines.

- SDEdit (Meng et al. 2022): noise the input x_0 to the timestep t_s that `strength` s picks,
  x_{t_s} ~ q(x_{t_s} | x_0) = N(√ᾱ_{t_s} x_0, (1 − ᾱ_{t_s}) I) (`scheduler.add_noise`), and run the reverse process
  from there. s = 1 starts from pure noise (plain generation), s = 0 runs no step and returns the input.
- Inpainting (RePaint, Lugmayr et al. 2022, eq. 8, without its resampling jumps): after every step the region the
  mask keeps (mask 0) is replaced by the input noised to the next step's level, x_{t−1} = m ⊙ x_{t−1}^unknown +
  (1 − m) ⊙ q(x_{t−1} | x_0), and by x_0 itself after the last step. In latent space this is diffusers' latent
  blending (`StableDiffusionInpaintPipeline` with a 4-channel UNet). The same noise ε is used at every step (as
  diffusers does), which keeps the known region on one consistent trajectory for deterministic (ODE) samplers.

Mask convention (diffusers'): 1 (white) = repaint, 0 (black) = keep; binarised at 0.5.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

from .utils import check_image_values, check_positive_int, run_step_callback, uint8_to_float

# diffusers' VaeImageProcessor passes a tensor with `vae_latent_channels` channels through untouched (as latents);
# our inputs are always images, so no channel count may mean "latents".
_NO_LATENT_CHANNELS = -1


# ----- checks --------------------------------------------------------------------------------------------------------
def check_strength(strength) -> float:
    """`strength` as a float in [0, 1] (0: no step, the input comes back; 1: start from pure noise)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise ValueError(f"strength must be a float in [0, 1], got {strength!r}")
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return float(strength)


def num_strength_steps(num_inference_steps: int, strength: float) -> int:
    """How many of the `num_inference_steps` steps img2img runs: int(N · s), as diffusers' `get_timesteps`."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def check_strength_steps(strength: float, num_inference_steps: int) -> None:
    """A strength > 0 must leave at least one step (strength 0 deliberately runs none and returns the input)."""
    check_positive_int("num_inference_steps", num_inference_steps)
    if strength > 0 and num_strength_steps(num_inference_steps, strength) < 1:
        raise ValueError(
            f"strength={strength} with num_inference_steps={num_inference_steps} leaves int(steps × strength) = 0 "
            f"denoising steps: raise num_inference_steps to at least {math.ceil(1 / strength)} or strength to at "
            f"least {1 / num_inference_steps:g} (strength=0 returns the input unchanged)"
        )


# ----- images and masks ---------------------------------------------------------------------------------------------
def image_processor(channels: int) -> VaeImageProcessor:
    """diffusers' processor for `image` inputs of a `channels`-channel model: PIL images are converted to L (1) or
    RGB (3), pixel values [0, 1] → [−1, 1]; resized only when `height`/`width` are given (PIL: Lanczos)."""
    return VaeImageProcessor(
        vae_scale_factor=1,
        vae_latent_channels=_NO_LATENT_CHANNELS,
        do_normalize=True,
        do_convert_rgb=channels == 3,
        do_convert_grayscale=channels == 1,
    )


MASK_PROCESSOR = VaeImageProcessor(
    vae_scale_factor=1,
    vae_latent_channels=_NO_LATENT_CHANNELS,
    do_normalize=False,
    do_binarize=True,
    do_convert_grayscale=True,
)


def _preprocess(processor: VaeImageProcessor, name: str, value, height: int | None, width: int | None):
    if value is None:
        raise ValueError(f"{name} must be a PIL image, a numpy array or a torch tensor (or a list of them), got None")
    valid = (PIL.Image.Image, np.ndarray, torch.Tensor)
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(item, valid) for item in items):
        kinds = sorted({type(item).__name__ for item in items}) or ["an empty list"]
        raise ValueError(
            f"{name} must be a PIL image, a numpy array or a torch tensor (or a list of them), got {kinds}"
        )
    for item in items:
        if not isinstance(item, PIL.Image.Image) and 0 in item.shape:
            raise ValueError(f"{name} is empty (shape {tuple(item.shape)})")
    check_image_values(name, value)  # finite, in [0, 1] (uint8 numpy as it is)
    try:
        return processor.preprocess(
            uint8_to_float(list(value) if isinstance(value, tuple) else value), height=height, width=width
        )
    except (ValueError, RuntimeError, TypeError) as err:  # e.g. mixed sizes in a list
        raise ValueError(f"{name} could not be read as images: {err}") from err


def preprocess_image(image, channels: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """`image` (PIL / numpy HWC or NHWC / torch CHW or NCHW, values in [0, 1]) → float32 (B, C, H, W) in [−1, 1],
    resized to `height` × `width` when given. ValueError naming `image` for a wrong type, range or channel count."""
    images = _preprocess(image_processor(channels), "image", image, height, width).float()
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"image must have {channels} channel(s) for this model, got shape {tuple(images.shape)}")
    return images


def preprocess_mask(mask_image, image_size: tuple[int, int], size: tuple[int, int] | None = None) -> torch.Tensor:
    """`mask_image` (1 = repaint, 0 = keep) → float32 (B, 1, h, w) of 0s and 1s at `size` (default `image_size`).

    The mask must have the size of the image as given (`image_size`, H × W); it is then resized with the image
    (nearest neighbour) and binarised at 0.5. PIL masks are converted to L."""
    mask = _preprocess(MASK_PROCESSOR, "mask_image", mask_image, None, None).float()
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask_image must have one channel, got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"mask_image must have the size of image, {image_size[0]}×{image_size[1]} (H×W), "
            f"got {mask.shape[-2]}×{mask.shape[-1]}"
        )
    if size is not None and tuple(size) != tuple(mask.shape[-2:]):
        mask = F.interpolate(mask, size=tuple(size), mode="nearest")
    return (mask >= 0.5).to(mask.dtype)  # exactly 0/1 also after resizing


def broadcast_batch(name: str, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat a batch of 1 to `batch_size`; any other mismatching batch is a ValueError naming `name`."""
    if tensor.shape[0] == batch_size:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch_size, *tensor.shape[1:]).contiguous()
    raise ValueError(f"{name} has a batch of {tensor.shape[0]}, which does not match the batch size {batch_size}")


def common_batch_size(**sizes: int | None) -> int:
    """The batch size of several inputs that are each of size 1 (broadcast) or of one common size."""
    given = {name: size for name, size in sizes.items() if size is not None}
    batch_size = max(given.values())
    bad = {name: size for name, size in given.items() if size not in (1, batch_size)}
    if bad:
        raise ValueError(f"batch sizes must be 1 or equal, got {given}")
    return batch_size


# ----- loading across pipeline classes ----------------------------------------------------------------------------
def as_pipeline_class(cls, pipe):
    """`pipe` as an instance of `cls`, sharing its components and its optional config entries (e.g. `id2label`).

    A folder saved by one of our pipelines names its class through the `pipeline.py` shim (`_class_name` is
    `["pipeline", "XPipeline"]`), and diffusers then builds that class whatever class `from_pretrained` was called
    on; diffusers' own pipelines instead return the class asked for (`StableDiffusionImg2ImgPipeline.from_pretrained(
    sd_repo)`). Not diffusers' `from_pipe`: that casts every module to float32 unless told a dtype, and drops a
    component whose type is not literally in the annotation."""
    if isinstance(pipe, cls):
        return pipe
    expected, optional = cls._get_signature_keys(cls)
    components = pipe.components
    missing = sorted(name for name in expected if name not in components and name not in cls._optional_components)
    if missing:
        raise ValueError(f"{type(pipe).__name__} has no component(s) {missing}, which {cls.__name__} needs")
    modules = {name: module for name, module in components.items() if name in expected}
    options = {name: pipe.config[name] for name in optional if name in pipe.config}
    converted = cls(**modules, **options)
    converted.register_to_config(_name_or_path=pipe.config.get("_name_or_path"))
    return converted


# ----- timesteps and the forward process ------------------------------------------------------------------------
def strength_timesteps(scheduler, strength: float) -> tuple[torch.Tensor, int]:
    """diffusers' `get_timesteps` on a scheduler whose `set_timesteps` ran: the last int(N · s) of the N steps,
    i.e. `scheduler.timesteps[t_start · order:]` (Heun-type second-order schedulers list most timesteps twice), and
    `set_begin_index` so that σ-indexed schedulers (Euler, DPM-Solver, ...) start their step counter and `add_noise`
    there. Returns the timesteps and the number of steps."""
    num_inference_steps = getattr(scheduler, "num_inference_steps", None) or len(scheduler.timesteps)
    t_start = max(num_inference_steps - num_strength_steps(num_inference_steps, strength), 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, num_inference_steps - t_start


def noised_start(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, strength: float):
    """x_{t_s}: the input noised to the first timestep (SDEdit), or, at strength 1, pure noise at the schedule's
    starting level (ε · init_noise_sigma, as diffusers' inpainting pipeline), so that s = 1 is plain generation.
    With no timesteps (s = 0) the input itself."""
    if len(timesteps) == 0:
        return x0
    if strength == 1.0:
        return noise * scheduler.init_noise_sigma
    return scheduler.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))


def known_region(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, step_index: int):
    """The kept region after step `step_index`: x_0 noised to the next timestep's level (RePaint, eq. 8), or x_0
    itself after the last step. σ-indexed schedulers read the level from their step counter, already advanced."""
    if step_index >= len(timesteps) - 1:
        return x0
    return scheduler.add_noise(x0, noise, timesteps[step_index + 1 : step_index + 2].repeat(x0.shape[0]))


def blend_known_region(
    scheduler, latents: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, timesteps, mask: torch.Tensor, i: int
) -> torch.Tensor:
    """x_{t−1} after step `i` with the kept region (mask 0) replaced by `known_region`; mask 1 keeps the sample.
    A select, not m·x + (1 − m)·known: the kept region is then exactly `known` (x_0 after the last step)."""
    known = known_region(scheduler, x0, noise, timesteps, i).to(latents.dtype)
    return torch.where(mask.to(latents.device) > 0.5, latents, known)


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (B, 1, H, W) of 0/1 → the latent grid (B, 1, H/f, W/f): a latent cell is repainted when any pixel
    of its f×f patch is (max pooling), so the repainted latent region covers the whole masked area."""
    height, width = mask.shape[-2:]
    if height % latent_size[0] or width % latent_size[1] or height // latent_size[0] != width // latent_size[1]:
        raise ValueError(f"mask of size {height}×{width} does not map onto latents of size {latent_size}")
    return F.max_pool2d(mask, kernel_size=height // latent_size[0])


@dataclass
class InpaintingBlend:
    """A `callback_on_step_end` that puts the known region back after every step, then calls the user's callback
    (which so sees, and may replace, the blended sample). `mask`: 1 = repaint, 0 = keep, at the sample's size."""

    scheduler: object
    x0: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor | None = None  # set by the pipeline's start (the ε of the start sample)
    timesteps: torch.Tensor | None = None
    callback: Callable | None = None
    tensor_inputs: tuple[str, ...] = ("latents",)

    def __call__(self, pipe, step_index: int, timestep, tensors: dict) -> dict:
        latents = blend_known_region(
            self.scheduler, tensors["latents"], self.x0, self.noise, self.timesteps, self.mask, step_index
        )
        return run_step_callback(pipe, self.callback, step_index, timestep, list(self.tensor_inputs), {
            "latents": latents
        })  # fmt: skip
