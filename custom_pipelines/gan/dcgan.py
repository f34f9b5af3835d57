"""DCGAN-size baseline (Radford et al. 2016) with a normalization choice for the critic.

The critic has no batch norm: WGAN-GP's gradient penalty is taken per sample, which batch norm's cross-sample
coupling invalidates (Gulrajani et al. 2017, §4 "No critic batch normalization"); layer norm is the suggested
drop-in. The same critic then serves weight-clipped WGAN and WGAN-GP, so the two compare on equal footing.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from custom_pipelines.gan.layers import LEAKY_RELU_SLOPE, check_int, check_resolution


def _generator_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    elif norm == "none":
        return nn.Identity()
    else:
        raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")


def _critic_norm(norm: str, channels: int) -> nn.Module:
    if norm == "layer":
        # GroupNorm with one group normalizes each sample over (C, H, W): layer norm for feature maps
        return nn.GroupNorm(1, channels)
    elif norm == "none":
        return nn.Identity()
    else:
        raise ValueError(f"norm must be 'layer' or 'none', got {norm!r}")


class DCGANGenerator(ModelMixin, ConfigMixin):
    """z → 4×4 transposed conv → (×2 transposed conv, norm, ReLU)* → tanh image in [-1, 1].

    Args:
        resolution (`int`, defaults to 32): output size, a power of two >= 8.
        img_channels (`int`, defaults to 3): image channels.
        z_dim (`int`, defaults to 100): latent size.
        base_channels (`int`, defaults to 64): channels of the last hidden layer; doubled at every lower resolution.
        norm (`"batch"` or `"none"`, defaults to `"batch"`): normalization after each hidden transposed conv.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        img_channels: int = 3,
        z_dim: int = 100,
        base_channels: int = 64,
        norm: Literal["batch", "none"] = "batch",
    ):
        super().__init__()
        num_up = check_resolution(resolution, minimum=8) - 2
        for name, value in (("img_channels", img_channels), ("z_dim", z_dim), ("base_channels", base_channels)):
            check_int(name, value)
        _generator_norm(norm, 1)  # refuse a bad norm even when no hidden layer uses it
        channels = base_channels * 2 ** (num_up - 1)
        layers = [nn.ConvTranspose2d(z_dim, channels, 4, 1, 0, bias=False), _generator_norm(norm, channels), nn.ReLU()]
        for _ in range(num_up - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                _generator_norm(norm, channels // 2),
                nn.ReLU(),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, img_channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, img_channels, resolution, resolution] in [-1, 1] for latents z [B, z_dim]."""
        return self.net(z.reshape(z.shape[0], -1, 1, 1))


class DCGANCritic(ModelMixin, ConfigMixin):
    """Image → (4×4 stride-2 conv, norm, leaky ReLU)* down to 4×4 → 4×4 conv → score [B, 1] (no sigmoid).

    Args:
        resolution (`int`, defaults to 32): input size, a power of two >= 8.
        img_channels (`int`, defaults to 3): image channels.
        base_channels (`int`, defaults to 64): channels of the first layer; doubled at every lower resolution.
        norm (`"layer"` or `"none"`, defaults to `"none"`): normalization of the hidden layers (never batch norm).
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        img_channels: int = 3,
        base_channels: int = 64,
        norm: Literal["layer", "none"] = "none",
    ):
        super().__init__()
        num_down = check_resolution(resolution, minimum=8) - 2
        for name, value in (("img_channels", img_channels), ("base_channels", base_channels)):
            check_int(name, value)
        _critic_norm(norm, 1)  # refuse a bad norm even at 8×8, where no hidden layer uses it
        channels = base_channels
        layers = [nn.Conv2d(img_channels, channels, 4, 2, 1), nn.LeakyReLU(LEAKY_RELU_SLOPE)]
        for _ in range(num_down - 1):
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1),
                _critic_norm(norm, channels * 2),
                nn.LeakyReLU(LEAKY_RELU_SLOPE),
            ]
            channels *= 2
        layers += [nn.Conv2d(channels, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores [B, 1] for images [B, img_channels, resolution, resolution]."""
        resolution = self.config.resolution
        if images.shape[-2:] != (resolution, resolution):
            raise ValueError(f"images must be {resolution}×{resolution}, got {tuple(images.shape[-2:])}")
        return self.net(images).reshape(images.shape[0], 1)


@torch.no_grad()
def _dcgan_init(model: nn.Module) -> None:
    """DCGAN §4: conv weights ~ N(0, 0.02); norm scales ~ N(1, 0.02), shifts 0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.weight.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            module.weight.normal_(1.0, 0.02)
            module.bias.zero_()
