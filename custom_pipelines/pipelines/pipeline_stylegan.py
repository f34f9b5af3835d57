"""StyleGAN sampling, style mixing and W-space interpolation (Karras et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import BaseOutput, make_image_grid
from diffusers.utils.torch_utils import randn_tensor

from custom_pipelines.gan.stylegan import StyleBand, StyleGANGenerator, style_band_layers
from custom_pipelines.hub.mixin import HubPipelineMixin
from custom_pipelines.pipelines.pipeline_gan import GeneratorArg, OutputType, check_common_inputs
from custom_pipelines.pipelines.utils import check_latents, postprocess_images

NoiseModeArg = Literal["random", "const", "none"]
PSI_RANGE = (-1.0, 2.0)


@dataclass
class StyleMixOutput(BaseOutput):
    """Output of [`StyleGANPipeline.style_mix`].

    Args:
        grid (`PIL.Image.Image`): the paper's Fig. 3 layout: top row the B sources, left column the A sources, cell
            (i, j) A_i with B_j's styles at the chosen layers; the top-left cell is black.
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the len(seeds_a)·len(seeds_b) mixed images,
            row-major (A index first), in `output_type`.
    """

    grid: PIL.Image.Image
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class StyleGANPipeline(HubPipelineMixin, DiffusionPipeline):
    """Unconditional image generation with a [`StyleGANGenerator`], plus style mixing and W-space interpolation.

    Args:
        stylegan ([`StyleGANGenerator`]): the generator (named `stylegan`: `generator` is the RNG argument).
    """

    model_cpu_offload_seq = "stylegan"

    def __init__(self, stylegan: StyleGANGenerator):
        super().__init__()
        self.register_modules(stylegan=stylegan)

    def check_inputs(
        self,
        batch_size: int,
        generator: GeneratorArg,
        truncation_psi: float,
        truncation_cutoff: int | None,
        noise_mode: str,
        latents: torch.Tensor | None,
        w: torch.Tensor | None,
        output_type: str,
    ) -> None:
        check_common_inputs(batch_size, generator, output_type)
        self._check_style_args(truncation_psi, truncation_cutoff, noise_mode)
        config, num_ws = self.stylegan.config, self.stylegan.num_ws
        if latents is not None and w is not None:
            raise ValueError("pass either latents (z) or w, not both")
        check_latents(latents, (batch_size, config.z_dim))
        if w is not None:
            shapes = ((batch_size, config.w_dim), (batch_size, num_ws, config.w_dim))
            if not isinstance(w, torch.Tensor):
                raise TypeError(
                    f"w must be a torch.Tensor of shape {shapes[0]} or {shapes[1]}, got {type(w).__name__}"
                )
            if tuple(w.shape) not in shapes:
                raise ValueError(f"w must have shape {shapes[0]} or {shapes[1]}, got {tuple(w.shape)}")
            check_latents(w, tuple(w.shape), name="w")  # floating point and finite

    def _check_style_args(self, truncation_psi: float, truncation_cutoff: int | None, noise_mode: str) -> None:
        low, high = PSI_RANGE
        psi = truncation_psi
        if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not low <= psi <= high:
            raise ValueError(f"truncation_psi must be a number in [{low}, {high}], got {truncation_psi!r}")
        num_ws = self.stylegan.num_ws
        cutoff = truncation_cutoff
        if cutoff is not None and (
            isinstance(cutoff, bool) or not isinstance(cutoff, int) or not 0 <= cutoff <= num_ws
        ):
            raise ValueError(f"truncation_cutoff must be None or an int in [0, {num_ws}], got {truncation_cutoff}")
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: GeneratorArg = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseModeArg = "const",
        latents: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        Args:
            batch_size (`int`, defaults to 1): number of images, >= 1.
            generator (`torch.Generator` or a list of `batch_size` of them, *optional*): draws z and, with
                noise_mode="random", the noise maps; a list gives each image its own seed.
            truncation_psi (`float` in [-1, 2], defaults to 1.0): ψ of the truncation trick w' = w_avg + ψ(w − w_avg);
                1 disables it, 0 gives the average image, ψ < 0 the "opposite" image (paper Fig. 8).
            truncation_cutoff (`int` in [0, num_ws], *optional*): truncate only the first layers (all if None).
            noise_mode (`"const"`, `"random"` or `"none"`, defaults to `"const"`): the model's fixed noise maps
                (deterministic), fresh noise from `generator`, or no noise.
            latents (`torch.Tensor` [batch_size, z_dim], *optional*): z to use instead of drawing it.
            w (`torch.Tensor` [batch_size, w_dim] or [batch_size, num_ws, w_dim], *optional*): skip the mapping
                network and synthesize from these styles (truncation still applies). Not together with `latents`.
            output_type (`"pil"`, `"np"` or `"pt"`, defaults to `"pil"`): PIL images, a float array [B, H, W, C] in
                [0, 1] or a float tensor [B, C, H, W] in [0, 1].
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.

        Returns:
            [`ImagePipelineOutput`] or `tuple` whose first element is the images.
        """
        # 1. validate the arguments before any work
        self.check_inputs(
            batch_size, generator, truncation_psi, truncation_cutoff, noise_mode, latents, w, output_type
        )
        model = self.stylegan

        # 2. styles: ws = truncate(mapping(z)) with z ~ N(0, I), or the given w broadcast to every layer
        if w is not None:
            w = w.to(self._execution_device, model.dtype)
            ws = w.unsqueeze(1).repeat(1, model.num_ws, 1) if w.ndim == 2 else w
            ws = model.mapping.truncate(ws, truncation_psi, truncation_cutoff)
        else:
            latents = self._prepare_latents(batch_size, generator, latents)
            ws = model.mapping(latents, truncation_psi, truncation_cutoff)

        # 3. synthesis network
        images = model.synthesis(ws, noise_mode=noise_mode, generator=generator)

        # 4. [-1, 1] → [0, 1] in the requested format
        images = postprocess_images(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _prepare_latents(self, batch_size: int, generator: GeneratorArg, latents: torch.Tensor | None):
        model = self.stylegan
        if latents is None:
            shape = (batch_size, model.config.z_dim)
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=model.dtype)
        return latents.to(self._execution_device, model.dtype)

    def _latents_from_seeds(self, seeds: list[int]) -> torch.Tensor:
        """z for each seed, the same z that `__call__(generator=torch.Generator().manual_seed(seed))` draws."""
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        return self._prepare_latents(len(seeds), generators, None)

    def _layers_from_b(self, crossover: StyleBand | int) -> list[int]:
        num_ws = self.stylegan.num_ws
        if isinstance(crossover, str) and crossover in get_args(StyleBand):
            return list(style_band_layers(self.stylegan.config.resolution, crossover))
        elif isinstance(crossover, int) and not isinstance(crossover, bool) and 0 <= crossover <= num_ws:
            return list(range(crossover, num_ws))
        else:
            raise ValueError(
                f"crossover must be 'coarse', 'middle', 'fine' or an int in [0, {num_ws}], got {crossover!r}"
            )

    @torch.no_grad()
    def style_mix(
        self,
        seeds_a: list[int],
        seeds_b: list[int],
        crossover: StyleBand | int = "coarse",
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseModeArg = "const",
        generator: torch.Generator | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ) -> StyleMixOutput | tuple:
        """Style-mixing grid (StyleGAN Fig. 3): images of A with some of B's styles copied in.

        Args:
            seeds_a, seeds_b (`list[int]`): seeds of the sources A (rows) and B (columns); z is drawn as in
                `__call__(generator=torch.Generator().manual_seed(seed))`.
            crossover (`"coarse"`, `"middle"`, `"fine"` or `int`, defaults to `"coarse"`): which of B's styles to use:
                the paper's band (coarse 4²–8², middle 16²–32², fine 64² and up; ValueError if the model has none)
                or, for an int k in [0, num_ws], every layer from k on (A keeps layers < k, as in mixing
                regularization).
            truncation_psi, truncation_cutoff, noise_mode, output_type: as in `__call__`.
            generator (`torch.Generator`, *optional*): draws the noise maps when noise_mode="random".
            return_dict (`bool`, defaults to True): return a [`StyleMixOutput`] instead of a tuple (grid, images).
        """
        for name, seeds in (("seeds_a", seeds_a), ("seeds_b", seeds_b)):
            if (
                not isinstance(seeds, (list, tuple))
                or len(seeds) == 0
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds)
            ):
                raise ValueError(f"{name} must be a non-empty list of int seeds, got {seeds!r}")
        check_common_inputs(1, generator, output_type)
        self._check_style_args(truncation_psi, truncation_cutoff, noise_mode)
        layers_from_b = self._layers_from_b(crossover)
        model, num_a, num_b = self.stylegan, len(seeds_a), len(seeds_b)

        ws_a = model.mapping(self._latents_from_seeds(seeds_a), truncation_psi, truncation_cutoff)
        ws_b = model.mapping(self._latents_from_seeds(seeds_b), truncation_psi, truncation_cutoff)
        ws_mix = ws_a.repeat_interleave(num_b, dim=0)  # row i, column j at i * num_b + j
        ws_mix[:, layers_from_b] = ws_b.repeat(num_a, 1, 1)[:, layers_from_b]

        images = model.synthesis(torch.cat([ws_a, ws_b, ws_mix]), noise_mode=noise_mode, generator=generator)
        pil_images = postprocess_images(images, "pil")
        sources_a, sources_b = pil_images[:num_a], pil_images[num_a : num_a + num_b]
        mixed = pil_images[num_a + num_b :]
        cells = [PIL.Image.new(sources_a[0].mode, sources_a[0].size)] + sources_b
        for i in range(num_a):
            cells += [sources_a[i]] + mixed[i * num_b : (i + 1) * num_b]
        grid = make_image_grid(cells, rows=num_a + 1, cols=num_b + 1)
        mixed_out = mixed if output_type == "pil" else postprocess_images(images[num_a + num_b :], output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (grid, mixed_out)
        return StyleMixOutput(grid=grid, images=mixed_out)

    @torch.no_grad()
    def interpolate(
        self,
        z0: torch.Tensor,
        z1: torch.Tensor,
        steps: int = 8,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseModeArg = "const",
        generator: torch.Generator | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Images along the straight line between map(z0) and map(z1) in W (linear in W, StyleGAN §4.1).

        Args:
            z0, z1 (`torch.Tensor` [z_dim] or [1, z_dim]): end points in Z.
            steps (`int` >= 2, defaults to 8): number of images, both ends included.
            truncation_psi, truncation_cutoff, noise_mode, output_type, return_dict: as in `__call__`.
            generator (`torch.Generator`, *optional*): draws the noise maps when noise_mode="random".
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise ValueError(f"steps must be an int >= 2, got {steps!r}")
        z_dim = self.stylegan.config.z_dim
        for name, z in (("z0", z0), ("z1", z1)):
            if not isinstance(z, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor of shape ({z_dim},) or (1, {z_dim}), got {type(z).__name__}"
                )
            if z.numel() != z_dim or z.ndim > 2:
                raise ValueError(f"{name} must have shape ({z_dim},) or (1, {z_dim}), got {tuple(z.shape)}")
            check_latents(z, tuple(z.shape), name=name)
        check_common_inputs(steps, generator, output_type)
        self._check_style_args(truncation_psi, truncation_cutoff, noise_mode)
        model = self.stylegan

        latents = torch.stack([z0.reshape(z_dim), z1.reshape(z_dim)]).to(self._execution_device, model.dtype)
        ws_ends = model.mapping(latents, truncation_psi, truncation_cutoff)
        t = torch.linspace(0, 1, steps, device=ws_ends.device, dtype=ws_ends.dtype).view(-1, 1, 1)
        ws = torch.lerp(ws_ends[:1], ws_ends[1:], t)
        images = postprocess_images(model.synthesis(ws, noise_mode=noise_mode, generator=generator), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
