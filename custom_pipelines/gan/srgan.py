"""SRResNet / SRGAN single-image super-resolution (Ledig et al. 2017) with the ESRGAN-era practice (Wang et al. 2018).

- `SRResNetGenerator` (alias `SRGANGenerator`): conv → residual blocks (no batch norm by default: BN in SR networks
  costs memory and brings artefacts, Lim et al. 2017 "EDSR" §3.1; `batch_norm=True` is the paper's network) → conv
  + long skip → ×2 sub-pixel stages (conv to 4F channels, PixelShuffle(2), Shi et al. 2016) → two convs. The network
  predicts a residual over an interpolated copy of its input (`image_skip`, as BasicSR's MSRResNet), with the last
  conv zero-initialised, so an untrained model already is bicubic upscaling and training only has to add detail.
- Output range: the image is clamped to [-1, 1] with a straight-through gradient (`straight_through_clamp`) rather
  than squashed by tanh: tanh would bend the linear image skip (the untrained model would no longer be bicubic) and
  saturate; the straight-through clamp keeps every output in range and every gradient alive.
- `SRGANDiscriminator`: the paper's VGG-style classifier (3×3 convs, stride 2 every second one, channels doubling,
  LeakyReLU 0.2, BN) ending in adaptive average pooling, so it scores any input size, then two dense layers.
- `VGGFeatures`: the content network φ, VGG19's convolutional trunk built from user-supplied safetensors (the
  torchvision key layout `features.<i>.weight`); nothing is downloaded unless asked. Without it the content loss
  falls back to L1 + (1 − SSIM) (`ContentLoss`), which needs no weights.
- Objectives: `pixel_loss` for the SRResNet stage; `adversarial_losses` "standard" (the paper's −log D) or
  "relativistic" (relativistic average GAN, Jolicoeur-Martineau 2018; ESRGAN eqs. 1–2).
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from custom_pipelines.evaluation.image_quality import ssim_loss
from custom_pipelines.gan.layers import LEAKY_RELU_SLOPE

SCALE_FACTORS = (2, 4)
IMAGE_SKIPS = ("bicubic", "bilinear", "none")
UPSAMPLE_SLOPE = 0.1  # LeakyReLU slope of the head and upsampling layers (BasicSR's MSRResNet)
RESIDUAL_INIT_SCALE = 0.1  # He init ×0.1 in the residual branches: each block starts near identity (BasicSR, ESRGAN)


def straight_through_clamp(x: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """clamp(x) in the forward pass, identity in the backward pass: outputs stay in range, gradients never die."""
    return x + (x.clamp(low, high) - x).detach()


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ResidualBlock(nn.Module):
    """x + conv(act(conv(x))) (each conv followed by BN when `batch_norm`): SRGAN's block, EDSR's without BN."""

    def __init__(self, channels: int, batch_norm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(channels)) if batch_norm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            norm(),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNetGenerator(ModelMixin, ConfigMixin):
    """Low-resolution image [B, C, h, w] in [-1, 1] → [B, C', s·h, s·w] in [-1, 1], any h, w.

    Args:
        scale_factor (`int`, defaults to 4): upscaling factor, 2 or 4 (one or two ×2 sub-pixel stages).
        in_channels (`int`, defaults to 3), out_channels (`int`, defaults to 3): image channels.
        num_features (`int`, defaults to 64): feature maps F of every layer (64 in the paper and MSRResNet).
        num_blocks (`int`, defaults to 16): residual blocks (16 in the paper and MSRResNet).
        batch_norm (`bool`, defaults to False): BN inside the residual blocks and after the body conv (the paper).
        image_skip (`"bicubic"`, `"bilinear"` or `"none"`, defaults to `"bicubic"`): the interpolated input the
            network's output is added to (MSRResNet uses bilinear); `"none"` for in_channels != out_channels.
    """

    @register_to_config
    def __init__(
        self,
        scale_factor: int = 4,
        in_channels: int = 3,
        out_channels: int = 3,
        num_features: int = 64,
        num_blocks: int = 16,
        batch_norm: bool = False,
        image_skip: Literal["bicubic", "bilinear", "none"] = "bicubic",
    ):
        super().__init__()
        _check_choice("scale_factor", scale_factor, SCALE_FACTORS)
        _check_choice("image_skip", image_skip, IMAGE_SKIPS)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            _check_positive(name, value)
        _check_positive("num_features", num_features)
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an integer >= 0, got {num_blocks!r}")
        if image_skip != "none" and in_channels != out_channels:
            raise ValueError(
                f"image_skip={image_skip!r} adds the upscaled input to the output, which needs in_channels == "
                f"out_channels, got {in_channels} and {out_channels}: use image_skip='none'"
            )
        f = num_features
        self.head = nn.Sequential(nn.Conv2d(in_channels, f, 3, padding=1), nn.LeakyReLU(UPSAMPLE_SLOPE))
        self.blocks = nn.Sequential(*(ResidualBlock(f, batch_norm) for _ in range(num_blocks)))
        self.body_end = nn.Sequential(
            nn.Conv2d(f, f, 3, padding=1), nn.BatchNorm2d(f) if batch_norm else nn.Identity()
        )
        upsample = []
        for _ in range(int(math.log2(scale_factor))):
            upsample += [nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(UPSAMPLE_SLOPE)]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Sequential(
            nn.Conv2d(f, f, 3, padding=1), nn.LeakyReLU(UPSAMPLE_SLOPE), nn.Conv2d(f, out_channels, 3, padding=1)
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=UPSAMPLE_SLOPE)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.mul_(RESIDUAL_INIT_SCALE)
        if self.config.image_skip != "none":  # start as the interpolation itself
            nn.init.zeros_(self.tail[-1].weight)

    @property
    def receptive_radius(self) -> int:
        """How many input pixels away an output pixel can see (its receptive field's half-width, rounded up).

        A tile of the input padded by this many real pixels on each side gives exactly the untiled output."""
        scale = self.config.scale_factor
        radius = 1 + 2 * self.config.num_blocks + 1  # head, blocks, body conv: 3×3 convs at the input size
        radius += sum(1 / 2**i for i in range(int(math.log2(scale))))  # one conv per sub-pixel stage
        radius += 2 / scale  # the two tail convs at the output size
        skip = {"bicubic": 2, "bilinear": 1, "none": 0}[self.config.image_skip]
        return math.ceil(max(radius, skip))

    def forward(self, lr_images: torch.Tensor) -> torch.Tensor:
        """Super-resolved images [B, out_channels, s·h, s·w] in [-1, 1] for `lr_images` [B, in_channels, h, w]."""
        if lr_images.ndim != 4 or lr_images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"lr_images must have shape [B, {self.config.in_channels}, h, w], got {tuple(lr_images.shape)}"
            )
        features = self.head(lr_images)
        features = features + self.body_end(self.blocks(features))  # the paper's long skip over the blocks
        residual = self.tail(self.upsample(features))
        if self.config.image_skip != "none":
            base = F.interpolate(
                lr_images, scale_factor=self.config.scale_factor, mode=self.config.image_skip, align_corners=False
            )
            residual = residual + base
        return straight_through_clamp(residual)


SRGANGenerator = SRResNetGenerator


class SRGANDiscriminator(ModelMixin, ConfigMixin):
    """VGG-style real/fake classifier of HR images, any size: logits [B, 1].

    Stage k (k = 0 .. num_stages − 1) is a stride-1 and a stride-2 3×3 conv with F·2^k channels (capped at 8F),
    each followed by BN (not the very first conv) and LeakyReLU 0.2; then adaptive average pooling to
    `pool_size`² and Dense(dense_features) → LeakyReLU → Dense(1) (Ledig et al. 2017, Fig. 4).

    Args:
        in_channels (`int`, defaults to 3): image channels.
        num_features (`int`, defaults to 64): channels F of the first stage.
        num_stages (`int`, defaults to 4): stride-2 stages (4 in the paper: 96² → 6²).
        dense_features (`int`, defaults to 1024): width of the hidden dense layer.
        pool_size (`int`, defaults to 4): side of the pooled feature map fed to the dense layers.
        batch_norm (`bool`, defaults to True): BN after the convs (the paper's; False for tiny batches).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        num_features: int = 64,
        num_stages: int = 4,
        dense_features: int = 1024,
        pool_size: int = 4,
        batch_norm: bool = True,
    ):
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_features", num_features),
            ("num_stages", num_stages),
            ("dense_features", dense_features),
            ("pool_size", pool_size),
        ):
            _check_positive(name, value)
        layers, channels = [], in_channels
        for k in range(num_stages):
            width = num_features * min(2**k, 8)
            for stride in (1, 2):
                first = not layers
                layers.append(nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=first or not batch_norm))
                if batch_norm and not first:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.LeakyReLU(LEAKY_RELU_SLOPE))
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * pool_size**2, dense_features),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
            nn.Linear(dense_features, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, 1] (no sigmoid) for images [B, in_channels, H, W] in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must have shape [B, {self.config.in_channels}, H, W], got {tuple(images.shape)}")
        return self.classifier(self.pool(self.features(images)))


# ----- the content network φ -----------------------------------------------------------------------------------------
# VGG19 "features": (name, output channels) of its 16 convs in order, with "pool" for the 2×2 max pools, laid out as
# torchvision's `vgg19().features` (a ReLU after each conv), so `features.<i>.weight` keys index the same layers.
VGG19_LAYOUT = (
    ("conv1_1", 64), ("conv1_2", 64), "pool",
    ("conv2_1", 128), ("conv2_2", 128), "pool",
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("conv3_4", 256), "pool",
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("conv4_4", 512), "pool",
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), ("conv5_4", 512), "pool",
)  # fmt: skip
VGG_LAYERS = tuple(entry[0] for entry in VGG19_LAYOUT if entry != "pool")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_FEATURE_SCALE = 1 / 12.75  # Ledig et al. 2017 §2.2.1: VGG features rescaled to a loss comparable to the MSE


def _vgg_trunk(layer: str, before_activation: bool) -> tuple[nn.Sequential, list[int]]:
    """torchvision-indexed layers up to `layer` (and its ReLU unless `before_activation`); the conv indices."""
    modules: list[nn.Module] = []
    conv_indices, channels = [], 3
    for entry in VGG19_LAYOUT:
        if entry == "pool":
            modules.append(nn.MaxPool2d(2, 2))
            continue
        name, width = entry
        conv_indices.append(len(modules))
        modules.append(nn.Conv2d(channels, width, 3, padding=1))
        if name == layer and before_activation:
            break
        modules.append(nn.ReLU())
        channels = width
        if name == layer:
            break
    return nn.Sequential(*modules), conv_indices


def resolve_weights_file(
    weights: str | os.PathLike, filename: str = "model.safetensors", local_files_only: bool = True
) -> str:
    """A `.safetensors` file, a folder holding `filename`, or a Hub repo id → a local file path.

    A repo id is resolved through huggingface_hub's cache; with `local_files_only` (the default) nothing is
    downloaded and a repo that is not cached raises a ValueError saying so."""
    path = os.fspath(weights)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"weights must be a .safetensors file (no pickles), got {path!r}")
        return path
    if os.path.isdir(path):
        candidate = os.path.join(path, filename)
        if not os.path.isfile(candidate):
            raise ValueError(f"weights folder {path!r} has no {filename}")
        return candidate
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(path, filename, local_files_only=local_files_only)
    except Exception as err:  # offline / not cached / no such repo: the user needs the options, not the trace
        where = "the local Hub cache (nothing is downloaded by default)" if local_files_only else "the Hub"
        raise ValueError(
            f"weights {path!r} is not a .safetensors file, a folder with {filename}, or a repo in {where} "
            f"({type(err).__name__}: {err})"
        ) from err


class VGGFeatures(nn.Module):
    """φ: images [B, 3, H, W] in [0, 1] → VGG19 feature maps at `layer` (ImageNet-normalised input).

    Build it with `VGGFeatures.from_safetensors(weights, layer=...)` from VGG19 weights the user supplies (e.g.
    torchvision's `vgg19(weights=...).features` state dict saved with `safetensors.torch.save_file`, keys
    `features.<i>.weight` or `<i>.weight`). `layer` is one of `VGG_LAYERS`; SRGAN's VGG54 is "conv5_4" after the
    ReLU, ESRGAN's is "conv5_4" before it (`before_activation=True`). Only the layers up to `layer` are built.
    """

    def __init__(self, layer: str = "conv5_4", before_activation: bool = False):
        super().__init__()
        _check_choice("layer", layer, VGG_LAYERS)
        self.layer, self.before_activation = layer, before_activation
        self.features, self.conv_indices = _vgg_trunk(layer, before_activation)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_safetensors(
        cls,
        weights: str | os.PathLike,
        layer: str = "conv5_4",
        before_activation: bool = False,
        filename: str = "model.safetensors",
        local_files_only: bool = True,
    ) -> VGGFeatures:
        """Load the convs up to `layer` from `weights` (`resolve_weights_file`); missing or misshapen keys raise."""
        from safetensors.torch import load_file

        path = resolve_weights_file(weights, filename, local_files_only)
        state = load_file(path)
        state = {k.removeprefix("features."): v for k, v in state.items()}
        model = cls(layer, before_activation)
        wanted = model.features.state_dict()
        missing = sorted(k for k in wanted if k not in state)
        if missing:
            raise ValueError(f"{path} lacks VGG19 weights {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        for key, tensor in wanted.items():
            if state[key].shape != tensor.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, VGG19 has {tuple(tensor.shape)}")
        model.features.load_state_dict({k: state[k] for k in wanted})
        return model.requires_grad_(False).eval()

    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        return self.features((images_01 - self.mean.to(images_01)) / self.std.to(images_01))


ContentLossName = Literal["vgg", "l1_ssim"]


class ContentLoss(nn.Module):
    """The SRGAN stage's content term on images in [-1, 1].

    - with a `feature_network` φ (`VGGFeatures`): MSE(φ(SR), φ(HR)) on features × 1/12.75 (Ledig et al. 2017, eq. 5);
    - without one (the fallback, no downloaded weights): L1(SR, HR) + `ssim_weight` · (1 − SSIM(SR, HR)), pixel
      fidelity plus local structure (Zhao et al. 2017, "Loss functions for image restoration").
    """

    def __init__(self, feature_network: nn.Module | None = None, ssim_weight: float = 1.0):
        super().__init__()
        if ssim_weight < 0:
            raise ValueError(f"ssim_weight must be >= 0, got {ssim_weight}")
        self.feature_network, self.ssim_weight = feature_network, ssim_weight

    @property
    def kind(self) -> ContentLossName:
        return "vgg" if self.feature_network is not None else "l1_ssim"

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        sr01, hr01 = (sr.float() + 1) / 2, (hr.float() + 1) / 2
        if self.feature_network is not None:
            phi_sr = self.feature_network(sr01.to(next(self.feature_network.parameters()).dtype))
            with torch.no_grad():
                phi_hr = self.feature_network(hr01.to(phi_sr.dtype))
            return F.mse_loss(phi_sr.float() * VGG_FEATURE_SCALE, phi_hr.float() * VGG_FEATURE_SCALE)
        return F.l1_loss(sr01, hr01) + self.ssim_weight * ssim_loss(sr01, hr01)


# ----- objectives -------------------------------------------------------------------------------------------------
PixelLossName = Literal["l1", "mse"]
AdversarialLossName = Literal["standard", "relativistic"]
ADVERSARIAL_LOSSES = ("standard", "relativistic")
PIXEL_LOSSES = ("l1", "mse")


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: PixelLossName = "l1") -> torch.Tensor:
    """The SRResNet stage's loss: "mse" (the paper's, PSNR-optimal) or "l1" (BasicSR's, sharper, robust)."""
    if kind == "l1":
        return F.l1_loss(sr.float(), hr.float())
    elif kind == "mse":
        return F.mse_loss(sr.float(), hr.float())
    else:
        raise ValueError(f"pixel loss must be one of {list(PIXEL_LOSSES)}, got {kind!r}")


def _bce_logits(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """−log σ(l) for target real, −log(1 − σ(l)) for fake, as softplus (stable in float32)."""
    return F.softplus(-logits.float() if target_is_real else logits.float()).mean()


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: AdversarialLossName
) -> torch.Tensor:
    """ "standard": −log D(HR) − log(1 − D(SR)). "relativistic": D_Ra(a, b) = σ(C(a) − E[C(b)]) and
    −E log D_Ra(HR, SR) − E log(1 − D_Ra(SR, HR)) (ESRGAN eq. 2)."""
    if kind == "standard":
        return _bce_logits(real_logits, True) + _bce_logits(fake_logits, False)
    elif kind == "relativistic":
        real_rel = real_logits - fake_logits.mean()
        fake_rel = fake_logits - real_logits.mean()
        return (_bce_logits(real_rel, True) + _bce_logits(fake_rel, False)) / 2
    else:
        raise ValueError(f"adversarial loss must be one of {list(ADVERSARIAL_LOSSES)}, got {kind!r}")


def generator_adversarial_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: AdversarialLossName
) -> torch.Tensor:
    """ "standard": −log D(SR) (the paper's eq. 6). "relativistic": the symmetric −E log(1 − D_Ra(HR, SR))
    − E log D_Ra(SR, HR) (ESRGAN eq. 3), so the generator also learns from the real images' scores."""
    if kind == "standard":
        return _bce_logits(fake_logits, True)
    elif kind == "relativistic":
        real_rel = real_logits - fake_logits.mean()
        fake_rel = fake_logits - real_logits.mean()
        return (_bce_logits(real_rel, False) + _bce_logits(fake_rel, True)) / 2
    else:
        raise ValueError(f"adversarial loss must be one of {list(ADVERSARIAL_LOSSES)}, got {kind!r}")
