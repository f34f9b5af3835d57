"""The pix2pix / CycleGAN PatchGAN discriminator (Isola et al. 2017): a fully convolutional net whose output map
scores overlapping patches as real or fake (70×70 receptive field for the default three strided layers). Used by
CycleGAN and, as the latent-diffusion autoencoder's adversarial term, by the VAE trainer.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PATCHGAN_NORMS = ("instance", "batch", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class PatchGANDiscriminator(ModelMixin, ConfigMixin):
    """4×4 convolutions: `num_layers` with stride 2 (channels doubling from `base_channels`, at most 8×), one with
    stride 1, and a 1-channel output conv; LeakyReLU 0.2; no norm on the first layer. Returns logits (N, 1, h, w)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm: str = "instance"):
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("base_channels", base_channels),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if norm not in PATCHGAN_NORMS:
            raise ValueError(f"norm must be one of {PATCHGAN_NORMS}, got {norm!r}")
        bias = norm != "batch"  # a batch norm's shift replaces the conv bias
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = base_channels
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1
            out = base_channels * min(2**i, 8)
            layers += [nn.Conv2d(channels, out, 4, stride, 1, bias=bias), _norm(norm, out), nn.LeakyReLU(0.2, True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():  # pix2pix's init: N(0, 0.02) weights
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"PatchGANDiscriminator expects (N, {self.config.in_channels}, H, W) images, got {tuple(x.shape)}"
            )
        return self.layers(x)

    @property
    def receptive_field(self) -> int:
        """Side of the input patch one output logit sees (70 for num_layers=3)."""
        size = 1
        for conv in reversed([m for m in self.layers if isinstance(m, nn.Conv2d)]):
            size = (size - 1) * conv.stride[0] + conv.kernel_size[0]
        return size
