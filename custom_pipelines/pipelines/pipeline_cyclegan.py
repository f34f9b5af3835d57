"""Unpaired image-to-image translation with a trained CycleGAN: image in domain A → G(image) in domain B, or
B → A with the other generator. Both generators are components of one pipeline (one repo)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from custom_pipelines.gan.cyclegan import CycleGANGenerator
from custom_pipelines.hub.mixin import HubPipelineMixin

from .utils import check_image_values, check_output_type, postprocess_images, uint8_to_float

DIRECTIONS = ("a_to_b", "b_to_a")
CYCLEGAN_OUTPUT_TYPES = ("pil", "np", "pt")
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list


class CycleGANPipeline(HubPipelineMixin, DiffusionPipeline):
    """Translate images between two domains with a pair of CycleGAN generators.

    Args:
        generator_a_to_b ([`CycleGANGenerator`]): maps domain A images to domain B (G in the paper).
        generator_b_to_a ([`CycleGANGenerator`]): maps domain B images to domain A (F in the paper).
    """

    model_cpu_offload_seq = "generator_a_to_b->generator_b_to_a"

    def __init__(self, generator_a_to_b: CycleGANGenerator, generator_b_to_a: CycleGANGenerator):
        super().__init__()
        self.register_modules(generator_a_to_b=generator_a_to_b, generator_b_to_a=generator_b_to_a)

    def translator(self, direction: str) -> CycleGANGenerator:
        if direction == "a_to_b":
            return self.generator_a_to_b
        elif direction == "b_to_a":
            return self.generator_b_to_a
        else:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")

    def check_inputs(self, image, direction: str, output_type: str) -> None:
        if not isinstance(direction, str) or direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        check_output_type(output_type, CYCLEGAN_OUTPUT_TYPES)
        items = image if isinstance(image, list) else [image]
        if not items or not all(isinstance(item, (PIL.Image.Image, np.ndarray, torch.Tensor)) for item in items):
            raise TypeError(
                "image must be a PIL image, a numpy array, a torch tensor (values in [0, 1]) or a non-empty list of "
                f"them, got {type(image).__name__}"
            )
        check_image_values("image", image)

    def preprocess(self, image: ImageInput, channels: int) -> torch.Tensor:
        """PIL / numpy [H, W(, C)] or [B, H, W, C] / torch [C, H, W] or [B, C, H, W] in [0, 1] → [B, C, H, W] in
        [-1, 1] with the generator's channel count (PIL images are converted to L or RGB)."""
        processor = VaeImageProcessor(
            vae_scale_factor=1,
            do_resize=False,
            do_normalize=True,
            do_convert_rgb=channels == 3,
            do_convert_grayscale=channels == 1,
            vae_latent_channels=0,  # never treat a tensor input as latents
        )
        items = image if isinstance(image, list) else [image]
        sizes = {_image_size(item) for item in items}
        if len(sizes) > 1:
            raise ValueError(f"image: every image of a list must have the same size, got sizes {sorted(sizes)}")
        # standard strides: a permuted numpy array reads as channels-last to oneDNN (other kernel, other rounding)
        pixels = processor.preprocess(uint8_to_float(image)).clone(memory_format=torch.contiguous_format)
        if pixels.ndim != 4 or pixels.shape[1] != channels:
            raise ValueError(
                f"image must have {channels} channel(s) for this generator, got a batch of shape {tuple(pixels.shape)}"
            )
        return pixels

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        direction: Literal["a_to_b", "b_to_a"] = "a_to_b",
        output_type: Literal["pil", "np", "pt"] = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Translate `image` to the other domain.

        Args:
            image (PIL image, numpy array, torch tensor, or a list of them): the input(s), any height and width;
                arrays and tensors hold values in [0, 1] (numpy [H, W, C] / [B, H, W, C], torch [C, H, W] /
                [B, C, H, W]). PIL images are converted to the generator's mode (L for 1 channel, RGB for 3).
            direction (`"a_to_b"` or `"b_to_a"`, defaults to `"a_to_b"`): which generator to run.
            output_type (`"pil"`, `"np"` or `"pt"`, defaults to `"pil"`): PIL images, a float array
                [B, H, W, C] in [0, 1] or a float tensor [B, C, H, W] in [0, 1]; same size as the input.
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.

        Returns:
            [`ImagePipelineOutput`] or `tuple` whose first element is the translated images.
        """
        # 1. validate the arguments before any work
        self.check_inputs(image, direction, output_type)
        model = self.translator(direction)

        # 2. any image format → [B, C, H, W] in [-1, 1]
        pixels = self.preprocess(image, model.config.in_channels).to(self._execution_device, model.dtype)

        # 3. one forward pass of the chosen generator (odd sizes are padded and cropped back inside it)
        translated = model(pixels)

        # 4. [-1, 1] → [0, 1] in the requested format
        images = postprocess_images(translated, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _image_size(item) -> tuple[int, int]:
    if isinstance(item, PIL.Image.Image):
        return item.size[1], item.size[0]
    if isinstance(item, np.ndarray):  # [H, W], [H, W, C] or [B, H, W, C]
        return tuple(item.shape[-3:-1]) if item.ndim >= 3 else tuple(item.shape)
    return tuple(item.shape[-2:])
