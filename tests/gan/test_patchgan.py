"""The PatchGAN discriminator: receptive field, output map size, channels, norms, round trip."""

import pytest
import torch

from custom_pipelines.gan.patchgan import PatchGANDiscriminator


def test_default_is_the_70x70_patchgan():
    d = PatchGANDiscriminator()
    assert d.receptive_field == 70
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 30×30 map for 256² inputs


@pytest.mark.parametrize("channels,norm", [(1, "instance"), (3, "batch"), (4, "none")])
def test_any_channel_count_and_norm(channels, norm):
    d = PatchGANDiscriminator(in_channels=channels, base_channels=8, num_layers=2, norm=norm)
    assert d(torch.randn(2, channels, 32, 32)).shape == (2, 1, 6, 6)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="norm"):
        PatchGANDiscriminator(norm="layer")
    with pytest.raises(ValueError, match="num_layers"):
        PatchGANDiscriminator(num_layers=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        PatchGANDiscriminator(base_channels=8)(torch.randn(1, 1, 32, 32))


def test_save_load_bit_identical(tmp_path):
    d = PatchGANDiscriminator(in_channels=1, base_channels=8, num_layers=2)
    d.save_pretrained(tmp_path)
    e = PatchGANDiscriminator.from_pretrained(tmp_path)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(d(x), e(x))
