"""StyleGAN (Karras et al. 2019, "A Style-Based Generator Architecture for GANs") at a fixed resolution.

The generator is split like NVlabs' code into `mapping(z, truncation_psi, truncation_cutoff) -> ws` and
`synthesis(ws, noise_mode, generator) -> images`, each callable on its own. Unlike the paper, training is not
progressive: every layer trains from the first step at the final resolution (as in StyleGAN2).
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from custom_pipelines.gan.layers import (
    AdaIN,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    EqualConv2d,
    EqualLinear,
    FromRGB,
    NoiseInjection,
    NoiseMode,
    ToRGB,
    channel_ladder,
    check_int,
    check_resolution,
    leaky_relu,
    pixel_norm,
)

StyleBand = Literal["coarse", "middle", "fine"]


def mix_ws(ws_a: torch.Tensor, ws_b: torch.Tensor, crossover: int) -> torch.Tensor:
    """Style mixing (StyleGAN §3.1): layers [0, crossover) take ws_a's styles, layers [crossover, num_ws) ws_b's."""
    num_ws = ws_a.shape[1]
    if not 0 <= crossover <= num_ws:
        raise ValueError(f"crossover must be in [0, {num_ws}], got {crossover}")
    return torch.cat([ws_a[:, :crossover], ws_b[:, crossover:]], dim=1)


def style_band_layers(resolution: int, band: StyleBand) -> range:
    """Indices of the w layers of one band of the paper's Fig. 3: coarse 4²–8², middle 16²–32², fine 64² and up.

    Resolution r drives layers 2·(log2 r − 2) and the next one. Raises ValueError when the model has no such layer.
    """
    num_ws = 2 * check_resolution(resolution) - 2
    if band == "coarse":
        layers = range(0, 4)
    elif band == "middle":
        layers = range(4, 8)
    elif band == "fine":
        layers = range(8, num_ws)
    else:
        raise ValueError(f"band must be 'coarse', 'middle' or 'fine', got {band!r}")
    layers = range(layers.start, min(layers.stop, num_ws))
    if len(layers) == 0:
        raise ValueError(f"a {resolution}×{resolution} StyleGAN has no {band!r} style layers")
    return layers


class MappingNetwork(nn.Module):
    """z → pixel norm → n_layers × (EqualLinear, lrelu) → w, broadcast to [B, num_ws, w_dim], then truncation.

    `w_avg` is the running mean of w (a persistent buffer, so it is saved with the weights), updated during training
    by `update_w_avg` and used for the truncation trick w' = w_avg + ψ (w − w_avg) (StyleGAN §2, appendix B).
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, n_layers: int, lr_multiplier: float):
        super().__init__()
        check_int("n_mapping_layers", n_layers)
        if not lr_multiplier > 0:
            raise ValueError(f"mapping_lr_multiplier must be > 0, got {lr_multiplier}")
        dims = [z_dim] + [w_dim] * n_layers
        self.layers = nn.Sequential(
            *(
                EqualLinear(fan_in, fan_out, lr_multiplier=lr_multiplier, activation="lrelu")
                for fan_in, fan_out in zip(dims[:-1], dims[1:])
            )
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.num_ws = num_ws

    def forward(
        self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> torch.Tensor:
        w = self.layers(pixel_norm(z)).to(self.w_avg.dtype)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.truncate(ws, truncation_psi, truncation_cutoff)

    def truncate(self, ws: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None):
        """Pull the first `truncation_cutoff` layers (all if None) of ws towards w_avg by ψ; ψ = 1 returns ws."""
        if truncation_psi == 1:
            return ws
        cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
        if not 0 <= cutoff <= self.num_ws:
            raise ValueError(f"truncation_cutoff must be in [0, {self.num_ws}] or None, got {truncation_cutoff}")
        w_avg = self.w_avg.to(ws.dtype)
        truncated = w_avg + truncation_psi * (ws[:, :cutoff] - w_avg)
        return torch.cat([truncated, ws[:, cutoff:]], dim=1)

    @torch.no_grad()
    def update_w_avg(self, ws: torch.Tensor, beta: float = 0.995) -> None:
        """w_avg ← β·w_avg + (1 − β)·mean(w) over the batch (and layers, if ws is [B, num_ws, w_dim])."""
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        batch_mean = ws.detach().reshape(-1, ws.shape[-1]).mean(dim=0).to(self.w_avg.dtype)
        self.w_avg.copy_(batch_mean.lerp(self.w_avg, beta))


class StyleLayer(nn.Module):
    """The end of every synthesis layer: noise → leaky ReLU → AdaIN(w) (StyleGAN Fig. 1b).

    The paper's per-channel bias sits before the noise; both are additive, so it lives in the preceding conv (where
    oneDNN fuses it) and the 4×4 constant input needs none (a bias on a learned constant is redundant).
    """

    def __init__(self, channels: int, w_dim: int, resolution: int):
        super().__init__()
        self.noise = NoiseInjection(channels, resolution)
        self.adain = AdaIN(channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode = "random", generator=None):
        return self.adain(leaky_relu(self.noise(x, noise_mode, generator)), w)


class StyledConv(nn.Module):
    """3×3 conv with bias (fused ×2 nearest upsampling if `up`) followed by a StyleLayer."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.conv = EqualConv2d(in_channels, out_channels, 3, resample="up" if up else "none")
        self.style = StyleLayer(out_channels, w_dim, resolution)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode = "random", generator=None):
        return self.style(self.conv(x), w, noise_mode, generator)


class SynthesisNetwork(nn.Module):
    """Learned 4×4 constant → StyleLayer, conv; then per resolution (up-conv, conv) → ToRGB. One w per layer."""

    def __init__(self, resolution: int, img_channels: int, w_dim: int, channel_base: int, channel_max: int):
        super().__init__()
        ch = channel_ladder(resolution, channel_base, channel_max)
        check_int("img_channels", img_channels)
        self.const = nn.Parameter(torch.ones(1, ch[0], 4, 4))
        layers = [StyleLayer(ch[0], w_dim, 4), StyledConv(ch[0], ch[0], w_dim, 4)]
        for s in range(1, len(ch)):
            res = 4 * 2**s
            layers += [StyledConv(ch[s - 1], ch[s], w_dim, res, up=True), StyledConv(ch[s], ch[s], w_dim, res)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = ToRGB(ch[-1], img_channels)
        self.num_ws = len(layers)

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "random", generator=None) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape [batch, {self.num_ws}, w_dim], got {tuple(ws.shape)}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode, generator)
        return self.to_rgb(x)


class StyleGANGenerator(ModelMixin, ConfigMixin):
    """StyleGAN generator: `mapping` (z → ws) and `synthesis` (ws → image in about [-1, 1]).

    Args:
        resolution (`int`, defaults to 32): output size, a power of two >= 4; there are 2·log2(resolution) − 2 ws.
        img_channels (`int`, defaults to 3): image channels (1 for grayscale).
        z_dim (`int`, defaults to 512): latent size.
        w_dim (`int`, defaults to 512): intermediate latent (style) size.
        n_mapping_layers (`int`, defaults to 8): fully connected layers of the mapping network.
        mapping_lr_multiplier (`float`, defaults to 0.01): learning-rate multiplier of the mapping layers.
        channel_base (`int`, defaults to 16384): channels at resolution r are min(channel_base // r, channel_max).
        channel_max (`int`, defaults to 512): cap on the channels of any layer.
    """

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        img_channels: int = 3,
        z_dim: int = 512,
        w_dim: int = 512,
        n_mapping_layers: int = 8,
        mapping_lr_multiplier: float = 0.01,
        channel_base: int = 16384,
        channel_max: int = 512,
    ):
        super().__init__()
        check_int("z_dim", z_dim)
        check_int("w_dim", w_dim)
        self.synthesis = SynthesisNetwork(resolution, img_channels, w_dim, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, n_mapping_layers, mapping_lr_multiplier)

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "random",
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Map z [B, z_dim] to ws and synthesize images [B, img_channels, resolution, resolution]."""
        return self.synthesis(self.mapping(z, truncation_psi, truncation_cutoff), noise_mode, generator)

    def update_w_avg(self, ws: torch.Tensor, beta: float = 0.995) -> None:
        """Track the mean w used by truncation; call once per generator training step with the batch's ws."""
        self.mapping.update_w_avg(ws, beta)

    def mix_styles(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        crossover: int,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """ws with layers [0, crossover) from z1 (coarse styles) and [crossover, num_ws) from z2."""
        ws1 = self.mapping(z1, truncation_psi, truncation_cutoff)
        ws2 = self.mapping(z2, truncation_psi, truncation_cutoff)
        return mix_ws(ws1, ws2, crossover)

    def sample_mixed_ws(
        self, z1: torch.Tensor, z2: torch.Tensor, mixing_prob: float = 0.9, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mixing regularization for training (StyleGAN §3.1): with probability `mixing_prob` per batch, switch from
        z1's to z2's styles at a crossover drawn uniformly from [1, num_ws); otherwise z1's ws alone."""
        if not 0 <= mixing_prob <= 1:
            raise ValueError(f"mixing_prob must be in [0, 1], got {mixing_prob}")
        device = generator.device if generator is not None else torch.device("cpu")
        ws = self.mapping(z1)
        if self.num_ws > 1 and torch.rand((), generator=generator, device=device).item() < mixing_prob:
            crossover = int(torch.randint(1, self.num_ws, (), generator=generator, device=device))
            ws = mix_ws(ws, self.mapping(z2), crossover)
        return ws


class StyleGANDiscriminator(ModelMixin, ConfigMixin):
    """Discriminator for `StyleGANGenerator`: FromRGB → blocks down to 4×4 → minibatch std → dense → logit [B, 1].

    Args:
        resolution (`int`, defaults to 32): input size, a power of two >= 4.
        img_channels (`int`, defaults to 3): image channels.
        channel_base (`int`, defaults to 16384), channel_max (`int`, defaults to 512): as in the generator.
        mbstd_group_size (`int`, defaults to 4): samples per minibatch-std group (the batch must divide by it).
        mbstd_num_channels (`int`, defaults to 1): feature maps added by minibatch std (0 disables it).
        residual (`bool`, defaults to False): add 1×1 skip connections to every block (StyleGAN2's resnet D).
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
        residual: bool = False,
    ):
        super().__init__()
        ch = channel_ladder(resolution, channel_base, channel_max)
        check_int("img_channels", img_channels)
        self.from_rgb = FromRGB(img_channels, ch[-1])
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[s], ch[s - 1], residual) for s in range(len(ch) - 1, 0, -1))
        self.epilogue = DiscriminatorEpilogue(ch[0], mbstd_group_size, mbstd_num_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Real/fake logits [B, 1] for images [B, img_channels, resolution, resolution] in [-1, 1]."""
        resolution = self.config.resolution
        if images.shape[-2:] != (resolution, resolution):
            raise ValueError(f"images must be {resolution}×{resolution}, got {tuple(images.shape[-2:])}")
        x = self.from_rgb(images)
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x)
