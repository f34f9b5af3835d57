"""GAN models and losses: StyleGAN, ProGAN, DCGAN and their building blocks."""

from custom_pipelines.gan.dcgan import DCGANCritic, DCGANGenerator
from custom_pipelines.gan.losses import GANLosses, gan_losses
from custom_pipelines.gan.progan import ProGANDiscriminator, ProGANGenerator
from custom_pipelines.gan.stylegan import StyleGANDiscriminator, StyleGANGenerator

__all__ = [
    "DCGANCritic",
    "DCGANGenerator",
    "GANLosses",
    "ProGANDiscriminator",
    "ProGANGenerator",
    "StyleGANDiscriminator",
    "StyleGANGenerator",
    "gan_losses",
]
