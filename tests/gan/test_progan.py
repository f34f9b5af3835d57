import pytest
import torch

from custom_pipelines.gan.layers import downsample_avg, upsample_nearest
from custom_pipelines.gan.progan import ProGANDiscriminator, ProGANGenerator


def tiny_discriminator(resolution=16):
    torch.manual_seed(1)
    return ProGANDiscriminator(resolution=resolution, img_channels=3, channel_base=128, channel_max=16).eval()


def test_defaults_to_final_resolution_and_full_alpha(progan):
    assert (progan.stage, progan.current_resolution, progan.fade_in_alpha) == (2, 16, 1.0)
    assert progan(torch.randn(2, 16)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("resolution", [4, 8, 16])
def test_shapes_at_every_stage(progan, resolution):
    disc = tiny_discriminator()
    for model in (progan, disc):
        model.current_resolution = resolution
        model.fade_in_alpha = 0.5
    images = progan(torch.randn(4, 16))
    assert images.shape == (4, 3, resolution, resolution)
    assert disc(images).shape == (4, 1)


def test_generator_fade_in_alpha_zero_is_the_old_resolution_upsampled(progan):
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    progan.current_resolution = 8
    old = progan(z)
    progan.current_resolution, progan.fade_in_alpha = 16, 0.0
    assert torch.equal(progan(z), upsample_nearest(old))


def test_generator_fade_in_alpha_one_is_the_new_block_and_alpha_blends(progan):
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    progan.current_resolution = 8
    old = upsample_nearest(progan(z))
    progan.current_resolution, progan.fade_in_alpha = 16, 1.0
    new = progan(z)
    # the new block's own output: ToRGB_16 of the last block's features
    features = progan.blocks[1](progan.blocks[0](progan_input_features(progan, z)))
    torch.testing.assert_close(new, progan.to_rgb[2](features))
    progan.fade_in_alpha = 0.25
    torch.testing.assert_close(progan(z), 0.75 * old + 0.25 * new)


def progan_input_features(model, z):
    from custom_pipelines.gan.layers import leaky_relu, pixel_norm

    x = pixel_norm(model.input_dense(pixel_norm(z)).reshape(z.shape[0], -1, 4, 4))
    return pixel_norm(leaky_relu(model.input_conv(x)))


def test_discriminator_fade_in_endpoints():
    disc = tiny_discriminator()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    disc.current_resolution = 8
    old = disc(downsample_avg(images))
    disc.current_resolution, disc.fade_in_alpha = 16, 0.0
    assert torch.equal(disc(images), old)
    disc.fade_in_alpha = 1.0
    new = disc(images)
    features = disc.blocks[0](disc.blocks[1](disc.from_rgb[2](images)))
    torch.testing.assert_close(new, disc.epilogue(features))
    with pytest.raises(ValueError, match="current_resolution"):
        disc(torch.randn(4, 3, 8, 8))


def test_growth_setters_validate(progan):
    progan.stage = 0
    assert progan.current_resolution == 4
    for bad in (32, 12, 2):
        with pytest.raises(ValueError, match="current_resolution"):
            progan.current_resolution = bad
    with pytest.raises(ValueError, match="stage"):
        progan.stage = 3
    with pytest.raises(ValueError, match="fade_in_alpha"):
        progan.fade_in_alpha = 1.5


def test_save_load_identical_and_back_at_final_resolution(progan, tmp_path):
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    expected = progan(z)
    progan.current_resolution, progan.fade_in_alpha = 8, 0.3  # run-time state is not saved
    progan.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ProGANGenerator.from_pretrained(tmp_path)
    assert (loaded.current_resolution, loaded.fade_in_alpha) == (16, 1.0)
    assert torch.equal(loaded(z), expected)


def test_every_parameter_of_the_active_paths_trains(progan):
    disc = tiny_discriminator()
    for model in (progan, disc):
        model.current_resolution, model.fade_in_alpha = 16, 0.5
    disc(progan(torch.randn(4, 16))).sum().backward()
    # only the 4×4 ToRGB / FromRGB sit off the path (DDP needs find_unused_parameters=True while growing)
    assert [n for n, p in progan.named_parameters() if p.grad is None] == [
        "to_rgb.0.conv.weight",
        "to_rgb.0.conv.bias",
    ]
    assert [n for n, p in disc.named_parameters() if p.grad is None] == [
        "from_rgb.0.conv.weight",
        "from_rgb.0.conv.bias",
    ]
