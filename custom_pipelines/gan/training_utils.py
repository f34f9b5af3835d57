"""Pieces of GAN training that are model code: the generator's training forward and ProGAN's blended reals."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .stylegan import StyleGANGenerator


class GeneratorForward(torch.nn.Module):
    """z → images (and StyleGAN's ws) in one forward, since DDP syncs gradients only through forward()."""

    def __init__(self, model: torch.nn.Module, style_mixing_prob: float = 0.0):
        super().__init__()
        self.model, self.style_mixing_prob = model, style_mixing_prob

    def rewrap(self, model: torch.nn.Module) -> GeneratorForward:
        """The same forward around another generator (FSDP's gather builds an unsharded copy this way)."""
        return GeneratorForward(model, self.style_mixing_prob)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(self.model, StyleGANGenerator):
            return self.model(z), None
        # the second latent for mixing regularization is a fresh draw (global RNG, saved with checkpoints)
        ws = self.model.sample_mixed_ws(z, torch.randn_like(z), self.style_mixing_prob)
        return self.model.synthesis(ws, noise_mode="random"), ws


def progan_reals(images: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
    """Reals at the stage's resolution, blended with the previous resolution while it fades in (Karras 2018 §A.1)."""
    images = F.adaptive_avg_pool2d(images, 4 * 2**stage)
    if alpha < 1.0:
        images = torch.lerp(F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest"), images, alpha)
    return images
