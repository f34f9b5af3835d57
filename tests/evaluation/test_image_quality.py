"""PSNR / SSIM / luma / sharpness against known values and scikit-image's reference implementation."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from custom_pipelines.evaluation.image_quality import psnr, rgb_to_y, sharpness, ssim, ssim_loss


def test_psnr_known_value_and_identity():
    x = torch.full((2, 3, 8, 8), 0.5)
    assert torch.isinf(psnr(x, x)).all()
    assert psnr(x, x + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # MSE 0.01 → 20 dB


def test_rgb_to_y_matches_bt601_studio_range():
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert rgb_to_y(white).flatten()[0].item() == pytest.approx(235 / 255, abs=1e-4)
    assert rgb_to_y(black).flatten()[0].item() == pytest.approx(16 / 255, abs=1e-6)
    assert rgb_to_y(torch.rand(1, 1, 4, 4)).shape == (1, 1, 4, 4)


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    b = np.clip(a + 0.1 * rng.standard_normal((32, 32)), 0, 1)
    ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    ours = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None]).item()
    assert ours == pytest.approx(ref, abs=1e-4)


def test_ssim_loss_is_differentiable_and_zero_for_equal_images():
    x = torch.rand(2, 3, 16, 16)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.rand(2, 3, 16, 16, requires_grad=True)
    ssim_loss(y, x).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_crop_border_and_bad_input():
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    y[..., :2, :] = x[..., :2, :]
    assert psnr(x, y, crop_border=2).item() < psnr(x, y).item() + 10
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[..., :8])
    with pytest.raises(ValueError, match="crop_border"):
        ssim(x, y, crop_border=8)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        psnr(np.zeros((1, 3, 4, 4)), y)


def test_sharpness_drops_with_blur():
    x = torch.rand(3, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert (sharpness(blurred) < sharpness(x)).all()
