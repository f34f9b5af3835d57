"""Single-image super-resolution with an SRResNet / SRGAN generator: LR image → ×2 or ×4 image, any size, tiled.

Tiling keeps memory bounded for large inputs: the image is cut into tiles of at most `tile_size`² input pixels that
overlap by `tile_overlap` on every side; each tile is upscaled alone and only its core (the tile minus the overlap)
is kept. With an overlap of at least the network's receptive radius (the default) every kept pixel sees exactly
the input it would see untiled, so the tiled result equals the untiled one up to float rounding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from custom_pipelines.gan.srgan import SRResNetGenerator
from custom_pipelines.hub.mixin import HubPipelineMixin

from .utils import check_image_values, check_output_type, postprocess_images, uint8_to_float

OutputType = Literal["pil", "np", "pt"]
SR_OUTPUT_TYPES = ("pil", "np", "pt")
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list


def tile_spans(size: int, tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Cover [0, size) with cores of `tile_size − 2·overlap`: (input start, input stop, core start, core stop) per
    tile, the input being the core widened by `overlap` on each side and clipped to the image."""
    core = tile_size - 2 * overlap
    spans = []
    for start in range(0, size, core):
        stop = min(start + core, size)
        spans.append((max(0, start - overlap), min(size, stop + overlap), start, stop))
    return spans


class SuperResolutionPipeline(HubPipelineMixin, DiffusionPipeline):
    """Upscale images ×`upscaler.config.scale_factor` with a trained SRResNet / SRGAN generator.

    Args:
        upscaler ([`SRResNetGenerator`]): maps LR images in [-1, 1] to HR images in [-1, 1].
    """

    model_cpu_offload_seq = "upscaler"

    def __init__(self, upscaler: SRResNetGenerator):
        super().__init__()
        self.register_modules(upscaler=upscaler)

    @property
    def scale_factor(self) -> int:
        return self.upscaler.config.scale_factor

    def check_inputs(self, image, output_type: str, tile_size: int | None, tile_overlap: int | None) -> None:
        if image is None or (isinstance(image, list) and not image):
            raise ValueError("image must be a PIL image, a numpy array, a torch tensor or a non-empty list of them")
        items = image if isinstance(image, list) else [image]
        if not all(isinstance(item, (PIL.Image.Image, np.ndarray, torch.Tensor)) for item in items):
            kinds = sorted({type(item).__name__ for item in items})
            raise TypeError(f"image must be PIL images, numpy arrays or torch tensors, got {kinds}")
        if len({type(item) for item in items}) > 1:
            raise TypeError("image: a list must hold items of one kind (all PIL, all numpy or all torch)")
        if isinstance(items[0], PIL.Image.Image) and len({item.size for item in items}) > 1:
            raise ValueError(f"image: the images of a batch must have one size, got {sorted({i.size for i in items})}")
        check_image_values("image", image)
        check_output_type(output_type, SR_OUTPUT_TYPES)
        if tile_overlap is not None and (not isinstance(tile_overlap, int) or tile_overlap < 0):
            raise ValueError(f"tile_overlap must be an integer >= 0 or None, got {tile_overlap!r}")
        if tile_size is not None:
            overlap = self.upscaler.receptive_radius if tile_overlap is None else tile_overlap
            if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size <= 2 * overlap:
                raise ValueError(
                    f"tile_size must be an integer > 2 × tile_overlap = {2 * overlap} (input pixels per tile side), "
                    f"or None for no tiling, got {tile_size!r}"
                )

    def preprocess(self, image) -> torch.Tensor:
        """PIL / numpy [(N,) H, W, C] / torch [(N,) C, H, W] in [0, 1] → [N, C, H, W] in [-1, 1]."""
        channels = self.upscaler.config.in_channels
        processor = VaeImageProcessor(
            vae_scale_factor=1,
            do_resize=False,
            do_normalize=True,
            do_convert_rgb=channels == 3,
            do_convert_grayscale=channels == 1,
            vae_latent_channels=0,  # never mistake an image for latents
        )
        if isinstance(image, torch.Tensor) and image.ndim == 3 and channels != 1:
            image = image.unsqueeze(0)
        pixels = processor.preprocess(uint8_to_float(image))
        if pixels.ndim != 4 or pixels.shape[1] != channels:
            raise ValueError(f"image must have {channels} channels, got a batch of shape {tuple(pixels.shape)}")
        return pixels

    def upscale(self, lr: torch.Tensor, tile_size: int | None, tile_overlap: int) -> torch.Tensor:
        """[N, C, h, w] in [-1, 1] → [N, C', s·h, s·w], in tiles when the image is larger than `tile_size`."""
        h, w = lr.shape[-2:]
        if tile_size is None or (h <= tile_size and w <= tile_size):
            return self.upscaler(lr)
        s = self.scale_factor
        out = torch.empty(
            (lr.shape[0], self.upscaler.config.out_channels, s * h, s * w), device=lr.device, dtype=lr.dtype
        )
        rows, cols = tile_spans(h, tile_size, tile_overlap), tile_spans(w, tile_size, tile_overlap)
        with self.progress_bar(total=len(rows) * len(cols)) as progress:
            for y0, y1, cy0, cy1 in rows:
                for x0, x1, cx0, cx1 in cols:
                    tile = self.upscaler(lr[..., y0:y1, x0:x1])
                    core = tile[..., s * (cy0 - y0) : s * (cy1 - y0), s * (cx0 - x0) : s * (cx1 - x0)]
                    out[..., s * cy0 : s * cy1, s * cx0 : s * cx1] = core
                    progress.update()
        return out

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Upscale `image` by the upscaler's scale factor (2 or 4).

        Args:
            image (PIL image, numpy array, torch tensor, or a list of one kind): the low-resolution input(s), any
                size; a batch shares one size. numpy: [H, W, C] or [N, H, W, C], floats in [0, 1] or uint8; torch:
                [C, H, W] or [N, C, H, W] in [0, 1].
            output_type (`"pil"`, `"np"` or `"pt"`, defaults to `"pil"`): PIL images, a float array [N, H, W, C] in
                [0, 1] or a float tensor [N, C, H, W] in [0, 1].
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            tile_size (`int`, *optional*): the largest input tile side; larger inputs are upscaled tile by tile so
                memory stays bounded. Must exceed 2 × `tile_overlap`. None: the whole image at once.
            tile_overlap (`int`, *optional*): input pixels each tile extends past its core on every side; defaults
                to the upscaler's receptive radius, with which the tiled result equals the untiled one.

        Returns:
            [`ImagePipelineOutput`] or `tuple` whose first element is the upscaled images.
        """
        # 1. validate the arguments before any work
        self.check_inputs(image, output_type, tile_size, tile_overlap)
        overlap = self.upscaler.receptive_radius if tile_overlap is None else tile_overlap

        # 2. images → [N, C, h, w] in [-1, 1] on the model's device and dtype
        lr = self.preprocess(image).to(self._execution_device, self.upscaler.dtype)

        # 3. the generator, tile by tile when the image exceeds tile_size
        hr = self.upscale(lr, tile_size, overlap)

        # 4. [-1, 1] → [0, 1] in the requested format
        images = postprocess_images(hr, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
