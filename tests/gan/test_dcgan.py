import pytest
import torch
from torch import nn

from custom_pipelines.gan.dcgan import DCGANCritic, DCGANGenerator


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
def test_shapes_and_tanh_range(resolution):
    torch.manual_seed(0)
    model = DCGANGenerator(resolution=resolution, img_channels=3, z_dim=8, base_channels=4)
    images = model(torch.randn(2, 8))
    assert images.shape == (2, 3, resolution, resolution)
    assert images.abs().max() <= 1
    for norm in ("none", "layer"):
        assert DCGANCritic(resolution=resolution, img_channels=3, base_channels=4, norm=norm)(images).shape == (2, 1)


def test_critic_never_uses_batch_norm_and_layer_norm_is_per_sample():
    critic = DCGANCritic(resolution=16, img_channels=1, base_channels=4, norm="layer")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in critic.modules())
    # per-sample normalization: a sample's score does not depend on the rest of the batch
    images = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(critic(images)[:1], critic(images[:1]))


def test_generator_norm_options():
    plain = DCGANGenerator(resolution=16, z_dim=8, base_channels=4, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert (
        sum(isinstance(m, nn.BatchNorm2d) for m in DCGANGenerator(resolution=16, z_dim=8, base_channels=4).modules())
        == 2
    )


def test_bad_options_raise():
    with pytest.raises(ValueError, match="'batch' or 'none'"):
        DCGANGenerator(norm="layer")
    with pytest.raises(ValueError, match="'layer' or 'none'"):
        DCGANCritic(norm="batch")
    with pytest.raises(ValueError, match=">= 8"):
        DCGANGenerator(resolution=4)
    with pytest.raises(ValueError, match="16×16"):
        DCGANCritic(resolution=16)(torch.randn(1, 3, 8, 8))


def test_save_load_identical_including_batch_norm_statistics(dcgan, tmp_path):
    dcgan.train()
    dcgan(torch.randn(8, 8))  # move the running statistics away from their initial values
    dcgan.eval()
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    dcgan.save_pretrained(tmp_path)
    loaded = DCGANGenerator.from_pretrained(tmp_path)
    assert torch.equal(loaded(z), dcgan(z))
