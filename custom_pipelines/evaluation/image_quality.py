"""Full-reference image quality: PSNR and SSIM (Wang et al. 2004) on [0, 1] images, on RGB or on the luma (Y)
channel with a border crop as BasicSR reports super-resolution, and a no-reference sharpness score. SSIM is
differentiable, so `ssim_loss` serves as a structural training loss that needs no downloaded weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma of 8-bit studio range, as MATLAB's rgb2ycbcr and BasicSR: Y in [16/255, 235/255]
_BT601_Y = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] → (N, 1, H, W) BT.601 luma in [16/255, 235/255]. One channel passes through."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (16.0 / 255.0 + _BT601_Y[0] * r + _BT601_Y[1] * g + _BT601_Y[2] * b).unsqueeze(1)


def _prepare(x: torch.Tensor, y: torch.Tensor, crop_border: int, y_channel: bool):
    _check_pair(x, y)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(x.shape[-2:]) <= 2 * crop_border:
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {tuple(x.shape[-2:])} image")
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    x, y = x.float(), y.float()
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    return x, y


def psnr(x: torch.Tensor, y: torch.Tensor, *, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, (N,), for images in [0, 1] (peak 1). Identical images give inf."""
    x, y = _prepare(x, y, crop_border, y_channel)
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(window_size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).to(like)
    return (g[:, None] * g[None, :]).expand(channels, 1, window_size, window_size).contiguous()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity per image, (N,), for images in [0, 1]: the mean SSIM map of an 11×11 Gaussian window
    (σ 1.5, K1 0.01, K2 0.03; "valid" windows only, as the reference code). Images smaller than the window use a
    window of their size. Differentiable."""
    x, y = _prepare(x, y, crop_border, y_channel)
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number, got {window_size}")
    size = min(window_size, *x.shape[-2:])
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size, sigma, x.shape[1], x)
    c1, c2 = 0.01**2, 0.03**2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """1 − mean SSIM: a structural reconstruction loss (0 for identical images) for images in [0, 1]."""
    return 1.0 - ssim(x, y, **kwargs).mean()


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute Laplacian of the luma per image, (N,), for images in [0, 1]: higher is sharper (a blurred
    copy always scores lower). The no-reference side of a perception–distortion report."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a tensor of shape (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    luma = rgb_to_y(x.float())
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=luma.dtype)
    return F.conv2d(luma, kernel.view(1, 1, 3, 3)).abs().flatten(1).mean(1)
