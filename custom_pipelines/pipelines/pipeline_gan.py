"""Unconditional sampling from a one-shot GAN generator (ProGAN, DCGAN): z ~ N(0, I) → G(z) → images."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from custom_pipelines.gan.dcgan import DCGANGenerator
from custom_pipelines.gan.progan import ProGANGenerator
from custom_pipelines.hub.mixin import HubPipelineMixin

from .utils import check_generator, check_latents, check_output_type, check_positive_int, postprocess_images

OutputType = Literal["pil", "np", "pt"]
GeneratorArg = torch.Generator | list[torch.Generator] | None


GAN_OUTPUT_TYPES = ("pil", "np", "pt")


def check_common_inputs(batch_size: int, generator: GeneratorArg, output_type: str) -> None:
    """Checks shared by the GAN pipelines: batch_size >= 1, one torch.Generator per sample if a list, output_type."""
    check_positive_int("batch_size", batch_size)
    check_generator(generator, batch_size)
    check_output_type(output_type, GAN_OUTPUT_TYPES)


class GANPipeline(HubPipelineMixin, DiffusionPipeline):
    """Unconditional image generation with a ProGAN or DCGAN generator.

    Args:
        gan_generator ([`ProGANGenerator`] or [`DCGANGenerator`]): maps latents [B, z_dim] to images in [-1, 1].
            A ProGAN generator samples at its `current_resolution`, which is its final resolution once loaded.
    """

    model_cpu_offload_seq = "gan_generator"

    def __init__(self, gan_generator: ProGANGenerator | DCGANGenerator):
        super().__init__()
        self.register_modules(gan_generator=gan_generator)

    def check_inputs(self, batch_size: int, generator: GeneratorArg, latents: torch.Tensor | None, output_type: str):
        check_common_inputs(batch_size, generator, output_type)
        check_latents(latents, (batch_size, self.gan_generator.config.z_dim))

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: GeneratorArg = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size (`int`, defaults to 1): number of images, >= 1.
            generator (`torch.Generator` or a list of `batch_size` of them, *optional*): makes sampling
                deterministic; a list gives each image its own seed, so a batch equals the single-image runs.
            latents (`torch.Tensor` of shape [batch_size, z_dim], *optional*): z to use instead of drawing it.
            output_type (`"pil"`, `"np"` or `"pt"`, defaults to `"pil"`): PIL images, a float array
                [B, H, W, C] in [0, 1] or a float tensor [B, C, H, W] in [0, 1].
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.

        Returns:
            [`ImagePipelineOutput`] or `tuple` whose first element is the images.
        """
        # 1. validate the arguments before any work
        self.check_inputs(batch_size, generator, latents, output_type)
        model = self.gan_generator

        # 2. z ~ N(0, I)
        if latents is None:
            latents = randn_tensor(
                (batch_size, model.config.z_dim), generator=generator, device=self._execution_device, dtype=model.dtype
            )
        latents = latents.to(self._execution_device, model.dtype)

        # 3. one forward pass of the generator
        images = model(latents)

        # 4. [-1, 1] → [0, 1] in the requested format
        images = postprocess_images(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
