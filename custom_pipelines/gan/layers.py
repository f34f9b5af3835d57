"""Small building blocks shared by the StyleGAN, ProGAN and DCGAN models.

Equalized learning rate (Karras et al. 2018, "Progressive Growing of GANs", §4.1): weights are stored as N(0, 1)
and multiplied at run time by the He constant c = gain / sqrt(fan_in) (gain = sqrt(2) for leaky-ReLU layers), so
that Adam's per-parameter step size acts on every layer at the same speed. A `lr_multiplier` < 1 stores the weights
scaled up by 1 / lr_multiplier and the run-time constant scaled down by lr_multiplier: same function, slower
learning (StyleGAN's mapping network uses 0.01, Karras et al. 2019, appendix C).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

SQRT2 = math.sqrt(2.0)
LEAKY_RELU_SLOPE = 0.2

Resample = Literal["none", "up", "down"]
NoiseMode = Literal["random", "const", "none"]


def check_resolution(resolution: int, name: str = "resolution", minimum: int = 4) -> int:
    """Return log2(resolution) for a power of two >= `minimum`, else raise ValueError."""
    if not isinstance(resolution, int) or resolution < minimum or resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {resolution}")
    return int(math.log2(resolution))


def check_int(name: str, value, minimum: int = 1) -> None:
    """ValueError unless `value` is an int (not a bool) >= `minimum`: model sizes from configs and users."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at one resolution: min(channel_base // resolution, channel_max), as in NVlabs' StyleGAN2."""
    channels = min(channel_base // resolution, channel_max)
    if channels < 1:
        raise ValueError(
            f"channel_base={channel_base} and channel_max={channel_max} give no channels at resolution {resolution}"
        )
    return channels


def channel_ladder(resolution: int, channel_base: int, channel_max: int) -> list[int]:
    """Feature maps at 4×4, 8×8, ..., resolution×resolution: entry s is `channels_at(4 · 2^s, ...)`."""
    check_int("channel_base", channel_base)
    check_int("channel_max", channel_max)
    return [channels_at(4 * 2**s, channel_base, channel_max) for s in range(check_resolution(resolution) - 1)]


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_RELU_SLOPE)


def he_constant(fan_in: int, gain: float = SQRT2) -> float:
    """He et al. 2015 initialisation constant gain / sqrt(fan_in), applied at run time by the equalized layers."""
    return gain / math.sqrt(fan_in)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalize each pixel's feature vector to unit RMS over channels (ProGAN §4.2, eq. 1)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x)


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample_avg(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate; `activation` is "linear" or "lrelu" (slope 0.2)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        gain: float = SQRT2,
        activation: Literal["linear", "lrelu"] = "linear",
    ):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        if not lr_multiplier > 0:  # it divides the stored weights
            raise ValueError(f"lr_multiplier must be > 0, got {lr_multiplier}")
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_multiplier)) if bias else None
        self.weight_gain = he_constant(in_features, gain) * lr_multiplier
        self.lr_multiplier = lr_multiplier
        self.activation = activation

    @property
    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_multiplier
        x = F.linear(x, self.effective_weight, bias)
        return leaky_relu(x) if self.activation == "lrelu" else x


def upsample_conv_kernel(weight: torch.Tensor) -> torch.Tensor:
    """4×4 transposed-conv kernel equal to nearest ×2 upsampling followed by the 3×3 conv `weight` (zero padded).

    Per axis the 3-tap kernel [w0, w1, w2] becomes [w0, w0+w1, w1+w2, w2] (StyleGAN1's "fused_scale"), flipped and
    with in/out swapped for conv_transpose2d. It computes the same as upsample+conv with 16 instead of 36 taps per
    input pixel.
    """
    summed = F.pad(weight, (1, 1, 1, 1))
    summed = summed[..., 1:, 1:] + summed[..., :-1, 1:] + summed[..., 1:, :-1] + summed[..., :-1, :-1]
    return summed.flip(-1, -2).transpose(0, 1)


def downsample_conv_kernel(weight: torch.Tensor) -> torch.Tensor:
    """4×4 stride-2 kernel equal to the 3×3 conv `weight` followed by 2×2 average pooling (exact, 4× fewer taps)."""
    summed = F.pad(weight, (1, 1, 1, 1))
    return 0.25 * (summed[..., 1:, 1:] + summed[..., :-1, 1:] + summed[..., 1:, :-1] + summed[..., :-1, :-1])


class EqualConv2d(nn.Module):
    """Square conv with equalized learning rate, "same" padding, optional fused ×2 up- or down-sampling.

    resample="up" computes conv(upsample_nearest(x)) and "down" computes downsample_avg(conv(x)) + bias, both with
    one 4×4 stride-2 conv (see `upsample_conv_kernel`); only 3×3 kernels can be fused.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        gain: float = SQRT2,
        resample: Resample = "none",
    ):
        super().__init__()
        if resample not in ("none", "up", "down"):
            raise ValueError(f"resample must be 'none', 'up' or 'down', got {resample!r}")
        if resample != "none" and kernel_size != 3:
            raise ValueError(f"resample={resample!r} needs kernel_size=3, got {kernel_size}")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = he_constant(in_channels * kernel_size * kernel_size, gain)
        self.resample = resample
        self.padding = kernel_size // 2

    @property
    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight
        if self.resample == "none":
            return F.conv2d(x, weight, self.bias, padding=self.padding)
        elif self.resample == "up":
            return F.conv_transpose2d(x, upsample_conv_kernel(weight), self.bias, stride=2, padding=1)
        elif self.resample == "down":
            return F.conv2d(x, downsample_conv_kernel(weight), self.bias, stride=2, padding=1)
        else:
            raise ValueError(f"resample must be 'none', 'up' or 'down', got {self.resample!r}")


class MinibatchStd(nn.Module):
    """Append the average standard deviation over groups of samples as extra feature maps (ProGAN §3).

    Samples b and b + k·(batch/group) for k = 0..group-1 form one group; each group's std over its members,
    averaged over features and pixels (per block of channels // num_channels), is tiled onto every member, so
    C channels become C + num_channels.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError(f"group_size and num_channels must be >= 1, got {group_size} and {num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        group = min(self.group_size, batch)
        if batch % group:
            raise ValueError(f"batch size {batch} must be divisible by the minibatch-std group size {group}")
        if channels % self.num_channels:
            raise ValueError(f"{channels} channels are not divisible by mbstd num_channels={self.num_channels}")
        y = x.float().reshape(group, batch // group, self.num_channels, channels // self.num_channels, height, width)
        y = (y.var(dim=0, correction=0) + 1e-8).sqrt().mean(dim=(2, 3, 4))
        y = y.reshape(batch // group, self.num_channels, 1, 1).repeat(group, 1, height, width)
        return torch.cat([x, y.to(x.dtype)], dim=1)


class NoiseInjection(nn.Module):
    """Add single-channel Gaussian noise scaled by a learned per-channel strength (StyleGAN §2, "B" in Fig. 1).

    The fixed noise map `noise_const` is a persistent buffer so that noise_mode="const" reproduces the same image
    after save/load.
    """

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def noise(self, x: torch.Tensor, noise_mode: NoiseMode, generator=None) -> torch.Tensor | None:
        if noise_mode == "none":
            return None
        elif noise_mode == "const":
            return self.noise_const
        elif noise_mode == "random":
            shape = (x.shape[0], 1, x.shape[2], x.shape[3])
            # drawn in float32 so that the noise does not depend on the autocast / model dtype
            return randn_tensor(shape, generator=generator, device=x.device, dtype=torch.float32)
        else:
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")

    def forward(self, x: torch.Tensor, noise_mode: NoiseMode = "random", generator=None) -> torch.Tensor:
        noise = self.noise(x, noise_mode, generator)
        if noise is None:
            return x
        return x + (noise * self.strength.view(1, -1, 1, 1)).to(x.dtype)


class AdaIN(nn.Module):
    """Adaptive instance normalization, StyleGAN eq. 1: y_s,c · (x_c − μ(x_c)) / σ(x_c) + y_b,c.

    The style y = (y_s, y_b) comes from an affine EqualLinear of w (gain 1, as in StyleGAN1); y_s is offset by 1 so a
    zero-initialised affine starts as plain instance norm. Instance norm runs as `layer_norm` over each feature map
    flattened (one fused pass with float statistics, also under bf16 autocast), then one multiply-add for the style.
    """

    def __init__(self, channels: int, w_dim: int, eps: float = 1e-8):
        super().__init__()
        self.affine = EqualLinear(w_dim, 2 * channels, gain=1.0)
        self.eps = eps

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style_scale, style_bias = self.affine(w).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        batch, channels, height, width = x.shape
        pixels = height * width
        normalized = F.layer_norm(x.reshape(batch, channels, pixels), (pixels,), eps=self.eps).reshape(x.shape)
        return torch.addcmul(style_bias.to(normalized.dtype), normalized, (1.0 + style_scale).to(normalized.dtype))


class ToRGB(nn.Module):
    """1×1 conv from features to image channels (linear, gain 1)."""

    def __init__(self, in_channels: int, img_channels: int):
        super().__init__()
        self.conv = EqualConv2d(in_channels, img_channels, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FromRGB(nn.Module):
    """1×1 conv + leaky ReLU from image channels to features."""

    def __init__(self, img_channels: int, out_channels: int):
        super().__init__()
        self.conv = EqualConv2d(img_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_relu(self.conv(x))


class DiscriminatorBlock(nn.Module):
    """conv3×3 → lrelu → conv3×3 with ×2 average-pool downsampling → lrelu; `residual` adds a 1×1 skip (StyleGAN2)."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool = False):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, resample="down")
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, gain=1.0) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(self.conv1(leaky_relu(self.conv0(x))))
        if self.skip is None:
            return h
        # dividing by sqrt(2) keeps the variance of the sum of two unit-variance branches at 1 (StyleGAN2 §4.1)
        return (h + self.skip(downsample_avg(x))) / SQRT2


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: minibatch std → conv3×3 → dense → dense to one logit per sample, shape [B, 1]."""

    def __init__(self, channels: int, mbstd_group_size: int = 4, mbstd_num_channels: int = 1):
        super().__init__()
        check_int("mbstd_group_size", mbstd_group_size)
        check_int("mbstd_num_channels", mbstd_num_channels, 0)  # 0 disables minibatch std
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = EqualConv2d(channels + max(mbstd_num_channels, 0), channels, 3)
        self.fc = EqualLinear(channels * 16, channels, activation="lrelu")
        self.out = EqualLinear(channels, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (4, 4):
            raise ValueError(f"the discriminator epilogue expects 4×4 features, got {tuple(x.shape[-2:])}")
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = leaky_relu(self.conv(x))
        return self.out(self.fc(x.flatten(1)))
