"""Progressive GAN (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and Variation").

Both networks are built at their final resolution; training grows them by setting `current_resolution` (or `stage`,
0 = 4×4) and `fade_in_alpha` at run time. While a new block fades in, the generator blends its output with the
previous resolution's image upsampled, and the discriminator blends the new FromRGB path with the old one on a
downsampled input (§3, Fig. 2). A freshly built or loaded model sits at its final resolution with α = 1.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from custom_pipelines.gan.layers import (
    SQRT2,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    EqualConv2d,
    EqualLinear,
    FromRGB,
    ToRGB,
    channel_ladder,
    check_int,
    check_resolution,
    downsample_avg,
    leaky_relu,
    pixel_norm,
    upsample_nearest,
)


class ProgressiveGrowing:
    """Run-time growth state shared by the ProGAN generator and discriminator (not part of the saved config)."""

    def _init_growth(self, resolution: int, channel_base: int, channel_max: int) -> list[int]:
        """Start at the final stage with α = 1; return the feature maps of each stage (entry s: 4·2^s × 4·2^s)."""
        self.max_stage = check_resolution(resolution) - 2
        self._stage = self.max_stage
        self._fade_in_alpha = 1.0
        return channel_ladder(resolution, channel_base, channel_max)

    @property
    def stage(self) -> int:
        """Index of the active resolution: 0 for 4×4 up to `max_stage` for the final resolution."""
        return self._stage

    @stage.setter
    def stage(self, stage: int) -> None:
        if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage <= self.max_stage:
            raise ValueError(f"stage must be an int in [0, {self.max_stage}], got {stage!r}")
        self._stage = stage

    @property
    def current_resolution(self) -> int:
        return 4 * 2**self._stage

    @current_resolution.setter
    def current_resolution(self, resolution: int) -> None:
        max_resolution = 4 * 2**self.max_stage
        if check_resolution(resolution, "current_resolution") - 2 > self.max_stage:
            raise ValueError(f"current_resolution must be a power of two in [4, {max_resolution}], got {resolution}")
        self._stage = int(math.log2(resolution)) - 2

    @property
    def fade_in_alpha(self) -> float:
        """Weight α in [0, 1] of the newest block; ignored at stage 0."""
        return self._fade_in_alpha

    @fade_in_alpha.setter
    def fade_in_alpha(self, alpha: float) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"fade_in_alpha must be a number in [0, 1], got {alpha!r}")
        self._fade_in_alpha = float(alpha)


class ProGANGeneratorBlock(nn.Module):
    """×2 nearest upsampling fused into a 3×3 conv, then a 3×3 conv; each followed by leaky ReLU and pixel norm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, out_channels, 3, resample="up")
        self.conv1 = EqualConv2d(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(leaky_relu(self.conv0(x)))
        return pixel_norm(leaky_relu(self.conv1(x)))


class ProGANGenerator(ModelMixin, ConfigMixin, ProgressiveGrowing):
    """ProGAN generator: z → pixel norm → dense 4×4 → conv → blocks up to `current_resolution` → ToRGB.

    Args:
        resolution (`int`, defaults to 32): final output size, a power of two >= 4.
        img_channels (`int`, defaults to 3): image channels.
        z_dim (`int`, defaults to 512): latent size.
        channel_base (`int`, defaults to 16384): channels at resolution r are min(channel_base // r, channel_max).
        channel_max (`int`, defaults to 512): cap on the channels of any layer.

    Set `current_resolution` (or `stage`) and `fade_in_alpha` to train a smaller network; outputs are
    [B, img_channels, current_resolution, current_resolution], roughly in [-1, 1].
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        img_channels: int = 3,
        z_dim: int = 512,
        channel_base: int = 16384,
        channel_max: int = 512,
    ):
        super().__init__()
        ch = self._init_growth(resolution, channel_base, channel_max)
        check_int("img_channels", img_channels)
        check_int("z_dim", z_dim)
        # the 4×4 "conv" on a 1×1 input is a dense layer; ProGAN gives it gain sqrt(2)/4 (16 outputs per input)
        self.input_dense = EqualLinear(z_dim, ch[0] * 16, gain=SQRT2 / 4, activation="lrelu")
        self.input_conv = EqualConv2d(ch[0], ch[0], 3)
        self.blocks = nn.ModuleList(ProGANGeneratorBlock(ch[s - 1], ch[s]) for s in range(1, self.max_stage + 1))
        self.to_rgb = nn.ModuleList(ToRGB(c, img_channels) for c in ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images at `current_resolution` for latents z [B, z_dim]."""
        x = pixel_norm(self.input_dense(pixel_norm(z)).reshape(z.shape[0], -1, 4, 4))
        x = pixel_norm(leaky_relu(self.input_conv(x)))
        previous = x
        for block in self.blocks[: self.stage]:
            previous, x = x, block(x)
        images = self.to_rgb[self.stage](x)
        alpha = self.fade_in_alpha
        if self.stage == 0 or alpha == 1.0:
            return images
        # fade-in (§3): (1 − α)·upsample(toRGB_old(h_old)) + α·toRGB_new(h_new)
        old_images = upsample_nearest(self.to_rgb[self.stage - 1](previous))
        return (1.0 - alpha) * old_images + alpha * images


class ProGANDiscriminator(ModelMixin, ConfigMixin, ProgressiveGrowing):
    """ProGAN discriminator: FromRGB at `current_resolution` → blocks down to 4×4 → minibatch std → logit [B, 1].

    Args:
        resolution (`int`, defaults to 32): final input size, a power of two >= 4.
        img_channels (`int`, defaults to 3): image channels.
        channel_base (`int`, defaults to 16384), channel_max (`int`, defaults to 512): as in the generator.
        mbstd_group_size (`int`, defaults to 4): samples per minibatch-std group (the batch must divide by it).
        mbstd_num_channels (`int`, defaults to 1): feature maps added by minibatch std (0 disables it).
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
    ):
        super().__init__()
        ch = self._init_growth(resolution, channel_base, channel_max)
        check_int("img_channels", img_channels)
        self.from_rgb = nn.ModuleList(FromRGB(img_channels, c) for c in ch)
        # blocks[s - 1] takes stage s (resolution 4·2^s) down to stage s − 1
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[s], ch[s - 1]) for s in range(1, self.max_stage + 1))
        self.epilogue = DiscriminatorEpilogue(ch[0], mbstd_group_size, mbstd_num_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Real/fake logits [B, 1] for images [B, img_channels, current_resolution, current_resolution]."""
        resolution = self.current_resolution
        if images.shape[-2:] != (resolution, resolution):
            raise ValueError(f"images must be {resolution}×{resolution} (current_resolution), got {images.shape}")
        x = self.from_rgb[self.stage](images)
        if self.stage > 0:
            x = self.blocks[self.stage - 1](x)
            alpha = self.fade_in_alpha
            if alpha < 1.0:
                # fade-in mirrored from the generator: the old FromRGB sees the input downsampled
                x = (1.0 - alpha) * self.from_rgb[self.stage - 1](downsample_avg(images)) + alpha * x
            for block in reversed(self.blocks[: self.stage - 1]):
                x = block(x)
        return self.epilogue(x)
