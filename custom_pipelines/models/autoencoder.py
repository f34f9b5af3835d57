"""Latents of an `AutoencoderKL` the way diffusers' Stable Diffusion pipelines use them: `scaling_factor` (and
`shift_factor` when the config has one) is applied exactly once on encode, `(z - shift) * scale`, and undone
exactly once on decode. `measure_latent_scale` finds both for a trained autoencoder (Rombach et al. 2022 §4.3:
rescale the latents to unit variance).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# a latent mean further than this from 0 (in latent standard deviations) is stored as `shift_factor`
SHIFT_THRESHOLD = 0.1


def latent_scale_and_shift(vae) -> tuple[float, float]:
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(scale), float(shift)


def encode_latents(vae, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
    """Images in [-1, 1], (N, C, H, W) → scaled latents: a posterior sample (or its mean with `sample=False`)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor of shape (N, C, H, W), got {getattr(images, 'shape', images)}")
    images = images.to(device=vae.device, dtype=vae.dtype)
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator=generator) if sample else posterior.mode()
    scale, shift = latent_scale_and_shift(vae)
    return (z - shift) * scale


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images in [-1, 1] (not clamped: the image processor clamps), in the VAE's dtype."""
    scale, shift = latent_scale_and_shift(vae)
    z = latents.to(device=vae.device, dtype=vae.dtype) / scale + shift
    return vae.decode(z).sample


@torch.no_grad()
def measure_latent_scale(
    vae, batches: Iterable, max_batches: int | None = None, sample: bool = True, generator=None
) -> tuple[float, float | None]:
    """`(scaling_factor, shift_factor)` that give the training set's latents unit std (and zero mean): 1/std of the
    unscaled latents over `batches` (tensors in [-1, 1] or dicts with "pixel_values"); `shift_factor` is None when
    the mean lies within SHIFT_THRESHOLD standard deviations of 0 (as in SD 1/2, which store none)."""
    total = total_sq = 0.0
    count = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        images = batch["pixel_values"] if isinstance(batch, dict) else batch
        images = images.to(device=vae.device, dtype=vae.dtype)
        posterior = vae.encode(images).latent_dist
        z = (posterior.sample(generator=generator) if sample else posterior.mode()).double()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
        count += z.numel()
    if count == 0:
        raise ValueError("measure_latent_scale needs at least one batch of images")
    mean = total / count
    std = max((total_sq / count - mean**2), 0.0) ** 0.5
    if not std > 0:
        raise ValueError("the latents have zero variance: the autoencoder is degenerate")
    shift = mean if abs(mean) > SHIFT_THRESHOLD * std else None
    return 1.0 / std, shift
