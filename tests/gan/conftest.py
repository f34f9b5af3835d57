import pytest
import torch

from custom_pipelines.gan.dcgan import DCGANGenerator
from custom_pipelines.gan.progan import ProGANGenerator
from custom_pipelines.gan.stylegan import StyleGANGenerator

TINY_STYLEGAN = dict(
    resolution=16, img_channels=1, z_dim=16, w_dim=16, n_mapping_layers=2, channel_base=128, channel_max=16
)


def randomize_noise_and_w_avg(model: StyleGANGenerator, seed: int = 1) -> StyleGANGenerator:
    """Fresh models have zero noise strengths and w_avg = 0; give both values so the tests can see them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("noise.strength"):
                param.copy_(0.5 * torch.rand(param.shape, generator=gen) + 0.1)
        model.mapping.w_avg.copy_(torch.randn(model.mapping.w_avg.shape, generator=gen))
    return model


def tiny_stylegan(**overrides) -> StyleGANGenerator:
    torch.manual_seed(0)
    return randomize_noise_and_w_avg(StyleGANGenerator(**{**TINY_STYLEGAN, **overrides}).eval())


@pytest.fixture
def make_stylegan():
    """Factory for tiny seeded StyleGAN generators with visible noise and w_avg; keyword overrides of the config."""
    return tiny_stylegan


@pytest.fixture
def stylegan() -> StyleGANGenerator:
    return tiny_stylegan()


@pytest.fixture
def progan() -> ProGANGenerator:
    torch.manual_seed(0)
    return ProGANGenerator(resolution=16, img_channels=3, z_dim=16, channel_base=128, channel_max=16).eval()


@pytest.fixture
def dcgan() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(resolution=16, img_channels=1, z_dim=8, base_channels=4).eval()
