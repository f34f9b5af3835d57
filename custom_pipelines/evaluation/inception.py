"""Inception-v3 as used for FID: the TensorFlow graph "2015-12-05" of Heusel et al., ported to PyTorch.

The layer names equal those of the public `pt_inception-2015-12-05` weights (torchvision's Inception-v3 names),
so a state dict converted once to safetensors loads with `strict=True`. The port differs from torchvision's
ImageNet Inception-v3 in four places, all needed to reproduce the TF features: the average pools inside the
Inception blocks do not count padding, the last block max-pools its pool branch, the classifier has 1008 outputs,
and inputs are scaled to [-1, 1]. No weights are ever downloaded unless the caller names a file or repo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from safetensors.torch import load_file

from custom_pipelines.evaluation.features import FeatureExtractor, quantize_uint8, to_rgb


class FrozenBatchNorm2d(nn.Module):
    """Inference-only batch norm (eps 1e-3, TF's value) whose statistics never change, even in `train()` mode."""

    def __init__(self, num_features: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class BasicConv2d(nn.Module):
    """Conv (no bias) → batch norm → ReLU, the unit every Inception branch is made of."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's "SAME" average pool divides by the number of real pixels, not 9: count_include_pad=False.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35×35 → 17×17 grid reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 then 7×1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """17×17 → 8×8 grid reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """8×8 block with expanded 1×3 / 3×1 filter banks.

    `pool="max"` reproduces a quirk of the TF graph: its last block (Mixed_7c) max-pools the pool branch.
    """

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


@dataclass
class InceptionV3FIDOutput(BaseOutput):
    """`features`: `[B, 2048]` pool3 features (the FID/KID/PR space). `logits`: `[B, num_classes]` (for IS)."""

    features: torch.Tensor
    logits: torch.Tensor


class InceptionV3FID(ModelMixin, ConfigMixin):
    """The FID Inception-v3 (TF "2015-12-05" graph): images in [0, 1] → 2048-d pool features and 1008 logits.

    Args:
        num_classes (`int`, defaults to 1008): outputs of the final linear layer (the TF graph has 1008).
        input_size (`int`, defaults to 299): inputs are resized to this square size (bilinear, no antialias, as
            pytorch-fid does) before the network.
    """

    @register_to_config
    def __init__(self, num_classes: int = 1008, input_size: int = 299):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, images: torch.Tensor, return_dict: bool = True) -> InceptionV3FIDOutput | tuple:
        """Features and logits of `[B, 3, H, W]` images in [0, 1] (any H, W; resized to `input_size`)."""
        size = self.config.input_size
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # the TF graph expects [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = x.mean(dim=(2, 3))
        logits = self.fc(features)
        if not return_dict:
            return features, logits
        return InceptionV3FIDOutput(features=features, logits=logits)


def _load_safetensors_into(model: InceptionV3FID, path: str) -> InceptionV3FID:
    state_dict = load_file(path)
    # Older torch checkpoints carry batch-norm step counters; frozen batch norm has no use for them.
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path!r} is not an FID Inception-v3 state dict: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); see docs/evaluation.md for the key names"
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def load_inception_fid(weights: str | os.PathLike, filename: str | None = None, **hub_kwargs) -> InceptionV3FID:
    """Build the FID Inception-v3 from safetensors weights; never unpickles and never downloads by default.

    Args:
        weights (`str`): one of
            - a local `.safetensors` file holding the state dict (keys as in docs/evaluation.md);
            - a local folder written by `InceptionV3FID.save_pretrained`;
            - a Hub repo id: with `filename`, that `.safetensors` file is fetched with `hf_hub_download` (a raw
              state dict); without, the repo is read with `InceptionV3FID.from_pretrained`.
        filename (`str`, *optional*): the `.safetensors` file inside the Hub repo.
        hub_kwargs: passed to `hf_hub_download` / `from_pretrained` (`revision`, `cache_dir`, `token`, ...).
    """
    path = os.fspath(weights)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(
                f"inception weights {path!r} are not a .safetensors file; convert the .pth once as shown in "
                "docs/evaluation.md (this package never unpickles weights)"
            )
        return _load_safetensors_into(InceptionV3FID(), path).eval()
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"inception weights folder {path!r} has no config.json (use save_pretrained's layout)")
        return InceptionV3FID.from_pretrained(path, use_safetensors=True).eval()
    if path.count("/") != 1 or path.endswith((".pth", ".pt", ".safetensors")):
        raise ValueError(f"inception weights {path!r} are neither an existing file or folder nor a Hub repo id")
    if filename is not None:
        if not filename.endswith(".safetensors"):
            raise ValueError(f"filename must name a .safetensors file, got {filename!r}")
        from huggingface_hub import hf_hub_download

        return _load_safetensors_into(InceptionV3FID(), hf_hub_download(path, filename, **hub_kwargs)).eval()
    return InceptionV3FID.from_pretrained(path, use_safetensors=True, **hub_kwargs).eval()


class InceptionFeatureExtractor(FeatureExtractor):
    """FID Inception-v3 features (2048-d) and 1008-class logits.

    Preprocessing: clamp to [0, 1], grayscale repeated to RGB, 8-bit quantisation, then the model's bilinear
    resize to 299×299.

    Args:
        model (`InceptionV3FID`): e.g. from `load_inception_fid(path)`.
    """

    name = "inception"
    feature_dim = 2048
    has_logits = True

    def __init__(self, model: InceptionV3FID):
        self.model = model.eval()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(quantize_uint8(to_rgb(images)).to(self.model.dtype), return_dict=False)
