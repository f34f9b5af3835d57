import os

import pytest
import torch

from custom_pipelines.gan.stylegan import StyleGANDiscriminator, StyleGANGenerator, mix_ws, style_band_layers


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("resolution", [4, 8, 16, 32])
def test_generator_and_discriminator_shapes_at_every_resolution(make_stylegan, resolution):
    model = make_stylegan(resolution=resolution, img_channels=3)
    assert model.num_ws == 2 * (resolution.bit_length() - 1) - 2
    z = torch.randn(4, 16, generator=gen())
    ws = model.mapping(z)
    assert ws.shape == (4, model.num_ws, 16)
    images = model.synthesis(ws, noise_mode="random", generator=gen())
    assert images.shape == (4, 3, resolution, resolution)
    for residual in (False, True):
        disc = StyleGANDiscriminator(
            resolution=resolution, img_channels=3, channel_base=128, channel_max=16, residual=residual
        )
        assert disc(images).shape == (4, 1)


def test_channels_follow_channel_base_and_max():
    model = StyleGANGenerator(resolution=32, img_channels=1, z_dim=8, w_dim=8, channel_base=256, channel_max=32)
    # 4×4 and 8×8: min(64, 32) = 32 and min(32, 32) = 32; 16×16: 16; 32×32: 8
    assert model.synthesis.const.shape == (1, 32, 4, 4)
    assert [layer.conv.bias.numel() for layer in model.synthesis.layers[1:]] == [32, 32, 32, 16, 16, 8, 8]


def test_mapping_is_deterministic_and_every_layer_gets_the_same_w(stylegan):
    z = torch.randn(3, 16, generator=gen())
    ws = stylegan.mapping(z)
    assert torch.equal(ws, stylegan.mapping(z))
    assert torch.equal(ws, ws[:, :1].expand_as(ws))


def test_truncation_psi_zero_gives_w_avg_for_every_z(stylegan):
    z = torch.randn(5, 16, generator=gen())
    ws = stylegan.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws, stylegan.mapping.w_avg.expand(5, stylegan.num_ws, -1))
    images = stylegan(z, truncation_psi=0.0, noise_mode="const")
    torch.testing.assert_close(images, images[:1].expand_as(images))
    mean_image = stylegan.synthesis(stylegan.mapping.w_avg.expand(1, stylegan.num_ws, -1), noise_mode="const")
    torch.testing.assert_close(images[:1], mean_image)


def test_truncation_psi_one_is_a_no_op_and_cutoff_limits_layers(stylegan):
    z = torch.randn(2, 16, generator=gen())
    ws = stylegan.mapping(z)
    assert torch.equal(stylegan.mapping(z, truncation_psi=1.0, truncation_cutoff=3), ws)
    ws_cut = stylegan.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    w_avg = stylegan.mapping.w_avg
    torch.testing.assert_close(ws_cut[:, :2], w_avg + 0.5 * (ws[:, :2] - w_avg))
    assert torch.equal(ws_cut[:, 2:], ws[:, 2:])
    with pytest.raises(ValueError, match="truncation_cutoff"):
        stylegan.mapping(z, truncation_psi=0.5, truncation_cutoff=stylegan.num_ws + 1)


def test_update_w_avg_is_an_exponential_moving_average(stylegan):
    old = stylegan.mapping.w_avg.clone()
    ws = stylegan.mapping(torch.randn(4, 16, generator=gen()))
    stylegan.update_w_avg(ws, beta=0.9)
    torch.testing.assert_close(stylegan.mapping.w_avg, 0.9 * old + 0.1 * ws[:, 0].mean(dim=0))
    with pytest.raises(ValueError, match="beta"):
        stylegan.update_w_avg(ws, beta=1.5)


def test_style_mixing_takes_layers_before_crossover_from_a_and_the_rest_from_b(stylegan):
    z1, z2 = torch.randn(2, 16, generator=gen(1)), torch.randn(2, 16, generator=gen(2))
    ws1, ws2 = stylegan.mapping(z1), stylegan.mapping(z2)
    for k in range(stylegan.num_ws + 1):
        mixed = stylegan.mix_styles(z1, z2, crossover=k)
        for layer in range(stylegan.num_ws):
            assert torch.equal(mixed[:, layer], (ws1 if layer < k else ws2)[:, layer])
    with pytest.raises(ValueError, match="crossover"):
        mix_ws(ws1, ws2, stylegan.num_ws + 1)


def test_sample_mixed_ws_is_seeded_and_respects_mixing_prob(stylegan):
    z1, z2 = torch.randn(2, 16, generator=gen(1)), torch.randn(2, 16, generator=gen(2))
    ws1, ws2 = stylegan.mapping(z1), stylegan.mapping(z2)
    assert torch.equal(stylegan.sample_mixed_ws(z1, z2, mixing_prob=0.0, generator=gen()), ws1)
    mixed = stylegan.sample_mixed_ws(z1, z2, mixing_prob=1.0, generator=gen(3))
    assert torch.equal(mixed, stylegan.sample_mixed_ws(z1, z2, mixing_prob=1.0, generator=gen(3)))
    from_b = [torch.equal(mixed[:, i], ws2[:, i]) for i in range(stylegan.num_ws)]
    crossover = from_b.index(True)
    assert crossover >= 1 and all(from_b[crossover:]) and not any(from_b[:crossover])
    crossovers = {
        [
            torch.equal(m, w) for m, w in zip(stylegan.sample_mixed_ws(z1, z2, 1.0, gen(s)).unbind(1), ws2.unbind(1))
        ].index(True)
        for s in range(40)
    }
    assert crossovers == set(range(1, stylegan.num_ws))
    with pytest.raises(ValueError, match="mixing_prob"):
        stylegan.sample_mixed_ws(z1, z2, mixing_prob=2.0)


def test_noise_modes(stylegan):
    z = torch.randn(2, 16, generator=gen())
    const = stylegan(z, noise_mode="const")
    assert torch.equal(const, stylegan(z, noise_mode="const"))
    random_a = stylegan(z, noise_mode="random", generator=gen(7))
    assert torch.equal(random_a, stylegan(z, noise_mode="random", generator=gen(7)))
    assert not torch.equal(random_a, stylegan(z, noise_mode="random", generator=gen(8)))
    none = stylegan(z, noise_mode="none")
    assert not torch.equal(none, const) and not torch.equal(none, random_a)
    with pytest.raises(ValueError, match="noise_mode"):
        stylegan(z, noise_mode="loud")


def test_synthesis_rejects_wrong_number_of_ws(stylegan):
    with pytest.raises(ValueError, match="ws must have shape"):
        stylegan.synthesis(torch.zeros(1, stylegan.num_ws - 1, 16))


def test_save_load_is_bit_identical_and_keeps_buffers(stylegan, tmp_path):
    stylegan.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = StyleGANGenerator.from_pretrained(tmp_path)
    assert torch.equal(loaded.mapping.w_avg, stylegan.mapping.w_avg) and loaded.mapping.w_avg.abs().sum() > 0
    for (name, buffer), (_, loaded_buffer) in zip(stylegan.named_buffers(), loaded.named_buffers()):
        assert torch.equal(buffer, loaded_buffer), name
    z = torch.randn(2, 16, generator=gen())
    assert torch.equal(
        stylegan(z, truncation_psi=0.7, noise_mode="const"), loaded(z, truncation_psi=0.7, noise_mode="const")
    )
    assert torch.equal(
        stylegan(z, noise_mode="random", generator=gen(3)), loaded(z, noise_mode="random", generator=gen(3))
    )


def test_discriminator_save_load(tmp_path):
    torch.manual_seed(0)
    disc = StyleGANDiscriminator(resolution=8, img_channels=1, channel_base=64, channel_max=8, residual=True)
    disc.save_pretrained(tmp_path)
    loaded = StyleGANDiscriminator.from_pretrained(tmp_path)
    images = torch.randn(4, 1, 8, 8, generator=gen())
    assert torch.equal(disc(images), loaded(images))
    with pytest.raises(ValueError, match="8×8"):
        disc(torch.randn(4, 1, 16, 16))


def test_runs_under_bf16_autocast_close_to_float32(stylegan):
    z = torch.randn(4, 16, generator=gen())
    reference = stylegan(z, truncation_psi=0.7, noise_mode="const")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = stylegan(z, truncation_psi=0.7, noise_mode="const")
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_trains_one_step_with_gradients_everywhere(stylegan):
    stylegan.train()
    disc = StyleGANDiscriminator(resolution=16, img_channels=1, channel_base=128, channel_max=16)
    z = torch.randn(4, 16, generator=gen())
    ws = stylegan.sample_mixed_ws(z, z.flip(0), mixing_prob=1.0, generator=gen())
    disc(stylegan.synthesis(ws, generator=gen())).mean().backward()
    missing = [name for name, p in stylegan.named_parameters() if p.grad is None]
    assert missing == []


def test_style_band_layers():
    assert list(style_band_layers(1024, "coarse")) == [0, 1, 2, 3]
    assert list(style_band_layers(1024, "middle")) == [4, 5, 6, 7]
    assert list(style_band_layers(1024, "fine")) == list(range(8, 18))
    assert list(style_band_layers(16, "middle")) == [4, 5]
    with pytest.raises(ValueError, match="no 'fine' style layers"):
        style_band_layers(32, "fine")
    with pytest.raises(ValueError, match="band"):
        style_band_layers(32, "medium")


def test_bad_config_raises():
    with pytest.raises(ValueError, match="resolution"):
        StyleGANGenerator(resolution=24)
    with pytest.raises(ValueError, match="n_mapping_layers"):
        StyleGANGenerator(resolution=8, n_mapping_layers=0, channel_base=64, channel_max=8)
