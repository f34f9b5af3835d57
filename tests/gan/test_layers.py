import math

import pytest
import torch
import torch.nn.functional as F

from custom_pipelines.gan.layers import (
    AdaIN,
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    EqualConv2d,
    EqualLinear,
    MinibatchStd,
    NoiseInjection,
    PixelNorm,
    channels_at,
    check_resolution,
    downsample_avg,
    upsample_nearest,
)


def test_equal_linear_effective_weight_is_stored_weight_times_he_constant():
    torch.manual_seed(0)
    layer = EqualLinear(50, 7)
    assert torch.equal(layer.effective_weight, layer.weight * math.sqrt(2 / 50))
    x = torch.randn(3, 50)
    torch.testing.assert_close(layer(x), x @ (layer.weight * math.sqrt(2 / 50)).T + layer.bias)
    # stored weights are N(0, 1), so the effective ones have He-init variance 2 / fan_in
    assert abs(EqualLinear(512, 512).weight.std().item() - 1.0) < 0.01


def test_equal_linear_lr_multiplier_stores_scaled_weights_with_same_effective_init():
    torch.manual_seed(0)
    layer = EqualLinear(64, 64, lr_multiplier=0.01, bias_init=1.0)
    assert abs(layer.weight.std().item() - 100.0) < 3
    assert layer.weight_gain == pytest.approx(math.sqrt(2 / 64) * 0.01)
    assert abs(layer.effective_weight.std().item() - math.sqrt(2 / 64)) < 0.01
    torch.testing.assert_close(layer(torch.zeros(1, 64)), torch.ones(1, 64))


def test_equal_conv_effective_weight_and_output():
    torch.manual_seed(0)
    conv = EqualConv2d(6, 4, 3, gain=1.0)
    assert torch.equal(conv.effective_weight, conv.weight * (1.0 / math.sqrt(6 * 9)))
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight / math.sqrt(54), conv.bias, padding=1))


def test_fused_upsample_conv_equals_upsample_then_conv():
    torch.manual_seed(0)
    conv = EqualConv2d(3, 5, 3, resample="up")
    conv.bias.data.normal_()
    x = torch.randn(2, 3, 6, 6)
    expected = F.conv2d(upsample_nearest(x), conv.effective_weight, conv.bias, padding=1)
    assert conv(x).shape == (2, 5, 12, 12)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_fused_conv_downsample_equals_conv_then_avg_pool():
    torch.manual_seed(0)
    conv = EqualConv2d(3, 5, 3, resample="down")
    conv.bias.data.normal_()
    x = torch.randn(2, 3, 8, 8)
    expected = downsample_avg(F.conv2d(x, conv.effective_weight, conv.bias, padding=1))
    assert conv(x).shape == (2, 5, 4, 4)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_equal_conv_rejects_bad_options():
    with pytest.raises(ValueError, match="resample"):
        EqualConv2d(3, 3, 3, resample="sideways")
    with pytest.raises(ValueError, match="kernel_size=3"):
        EqualConv2d(3, 3, 1, resample="up")
    with pytest.raises(ValueError, match="activation"):
        EqualLinear(3, 3, activation="gelu")


def test_pixel_norm_gives_unit_rms_per_pixel():
    x = torch.randn(4, 8, 5, 5) * 7 + 3
    y = PixelNorm()(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(4, 5, 5))
    # a rescaling per pixel is all it does
    torch.testing.assert_close(y / x, (y / x)[:, :1].expand_as(x))


def test_minibatch_std_adds_one_channel_with_group_std():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    y = MinibatchStd(group_size=4)(x)
    assert y.shape == (8, 4, 4, 4)
    torch.testing.assert_close(y[:, :3], x)
    # groups are samples {m, m + 2, m + 4, m + 6} for m = 0, 1
    for m in range(2):
        group = x[m::2]
        expected = group.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
        torch.testing.assert_close(y[m::2, 3], expected.expand(4, 4, 4))


def test_minibatch_std_checks_batch_divisibility_and_small_batches():
    assert MinibatchStd(group_size=4)(torch.randn(2, 3, 4, 4)).shape == (2, 4, 4, 4)  # group = min(4, batch)
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStd(group_size=4)(torch.randn(6, 3, 4, 4))


def test_noise_injection_modes():
    torch.manual_seed(0)
    layer = NoiseInjection(3, 4)
    layer.strength.data = torch.tensor([0.0, 1.0, 2.0])
    x = torch.zeros(2, 3, 4, 4)
    torch.testing.assert_close(layer(x, "none"), x)
    torch.testing.assert_close(layer(x, "const")[1, 2], 2 * layer.noise_const[0, 0])
    a = layer(x, "random", torch.Generator().manual_seed(3))
    b = layer(x, "random", torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert torch.equal(a[:, 0], torch.zeros(2, 4, 4))  # zero strength, no noise in channel 0
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, "loud")


def test_adain_normalizes_then_applies_style():
    torch.manual_seed(0)
    adain = AdaIN(channels=4, w_dim=6)
    x = torch.randn(2, 4, 8, 8) * 5 + 2
    w = torch.randn(2, 6)
    scale, bias = adain.affine(w).chunk(2, dim=1)
    normalized = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True, unbiased=False)
    expected = (1 + scale)[..., None, None] * normalized + bias[..., None, None]
    torch.testing.assert_close(adain(x, w), expected, atol=1e-4, rtol=1e-4)


def test_discriminator_blocks_shapes():
    x = torch.randn(4, 8, 16, 16)
    assert DiscriminatorBlock(8, 16)(x).shape == (4, 16, 8, 8)
    assert DiscriminatorBlock(8, 16, residual=True)(x).shape == (4, 16, 8, 8)
    assert DiscriminatorEpilogue(8)(torch.randn(4, 8, 4, 4)).shape == (4, 1)
    assert DiscriminatorEpilogue(8, mbstd_num_channels=0)(torch.randn(3, 8, 4, 4)).shape == (3, 1)


def test_resolution_and_channel_helpers():
    assert check_resolution(32) == 5
    assert channels_at(32, 16384, 512) == 512 and channels_at(256, 16384, 512) == 64
    for bad in (0, 2, 12, 33, 32.0):
        with pytest.raises(ValueError, match="power of two"):
            check_resolution(bad)
