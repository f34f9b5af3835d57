"""Image-to-image (SDEdit) and inpainting with our pixel-space diffusion models, unconditional or class-conditional.

The sampling body is `PixelDiffusionPipeline._generate`; this pipeline only replaces its `_start` (the input noised
to the strength's timestep instead of x_T) and, for inpainting, blends the known region back after every step
(`img2img.InpaintingBlend`, run as the first step callback). `LatentImg2ImgPipeline` does the same on the latents
of `LatentDiffusionPipeline` through its `_start` / `_after_step` hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from custom_pipelines.models.autoencoder import encode_latents
from custom_pipelines.models.class_conditioning import conditioning_method
from custom_pipelines.models.unet_class_concat import ClassConcatUNet2DModel

from .guidance import ClassifierFreeGuidance
from .img2img import (
    InpaintingBlend,
    as_pipeline_class,
    blend_known_region,
    broadcast_batch,
    check_strength,
    check_strength_steps,
    common_batch_size,
    latent_mask,
    noised_start,
    preprocess_image,
    preprocess_mask,
    strength_timesteps,
)
from .pipeline_class_conditional import ClassConditionalDiffusionPipeline, ClassLabel, normalize_id2label
from .pipeline_latent_diffusion import LatentDiffusionPipeline, PromptArg, check_prompts
from .pixel_diffusion import PixelDiffusionPipeline, with_sampling_arguments
from .utils import as_nchw_tensor, check_callback_inputs

_DEFAULT_STEPS = inspect.signature(PixelDiffusionPipeline._generate).parameters["num_inference_steps"].default


def is_class_conditional(unet: torch.nn.Module) -> bool:
    """Whether `unet` takes class labels (our "embedding" or "concat" conditioning)."""
    try:
        conditioning_method(unet)
    except ValueError:
        return False
    return True


def unet_downsampling(unet: torch.nn.Module) -> int:
    """The factor a UNet2DModel-like network downsamples by (2 per down block but the last): sizes must divide."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


@dataclass
class _Img2ImgCall:
    """What one `__call__` hands to `_start`: set afresh at the start of every call, never read across calls."""

    image: torch.Tensor  # x_0, (B, C, H, W) in [−1, 1]
    strength: float
    blend: InpaintingBlend | None


class DiffusionImg2ImgPipeline(PixelDiffusionPipeline):
    r"""Image-to-image translation (SDEdit, Meng et al. 2022) and inpainting (RePaint-style) with a pixel-space model.

    Loads any folder of `UnconditionalDiffusionPipeline` or `ClassConditionalDiffusionPipeline`:
    `DiffusionImg2ImgPipeline.from_pretrained(folder)` (or `DiffusionImg2ImgPipeline.from_pipe(pipe)`) returns this
    class with the same components, as diffusers' `StableDiffusionImg2ImgPipeline.from_pretrained(sd_repo)` does.

    Components:
        unet: diffusers' `UNet2DModel` (unconditional), or a class-conditional one (`UNet2DModel` with
            `num_class_embeds=K + 1`, or our `ClassConcatUNet2DModel`; id K is the null class).
        scheduler ([`SchedulerMixin`]): any of ours (`DDPMAncestralScheduler`, `DDIMEtaScheduler`,
            `DPMSolver2MScheduler`) or of diffusers' (DDPM, DDIM, DPMSolverMultistep, Euler, Heun, ...).
        id2label (`dict[int, str]`, *optional*): class names of a class-conditional model (as in
            `ClassConditionalDiffusionPipeline`); must be None for an unconditional one.
    """

    def __init__(
        self,
        unet: UNet2DModel | ClassConcatUNet2DModel,
        scheduler: SchedulerMixin,
        id2label: dict[int, str] | dict[str, str] | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        if id2label is not None and not is_class_conditional(unet):
            raise ValueError(f"id2label names classes, but {type(unet).__name__} is not class-conditional")
        id2label = normalize_id2label(id2label, self.num_classes) if id2label is not None else None
        self.register_to_config(id2label=id2label)
        self.labels = {name: int(i) for i, name in id2label.items()} if id2label else {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> DiffusionImg2ImgPipeline:
        """`HubPipelineMixin.from_pretrained`, returning this class also for a folder or repo saved by
        `UnconditionalDiffusionPipeline` or `ClassConditionalDiffusionPipeline` (same components, `id2label` kept).
        Arguments are diffusers'."""
        return as_pipeline_class(cls, super().from_pretrained(pretrained_model_name_or_path, **kwargs))

    # The class-label handling of the class-conditional pipeline, shared rather than copied (these read only
    # `self.unet`, `self.labels` and `self._guidance_scale`).
    num_classes = ClassConditionalDiffusionPipeline.num_classes
    null_class_id = ClassConditionalDiffusionPipeline.null_class_id
    get_label_ids = ClassConditionalDiffusionPipeline.get_label_ids
    check_conditioning = ClassConditionalDiffusionPipeline.check_conditioning
    guidance_scale = ClassConditionalDiffusionPipeline.guidance_scale
    do_classifier_free_guidance = ClassConditionalDiffusionPipeline.do_classifier_free_guidance

    @property
    def is_class_conditional(self) -> bool:
        return is_class_conditional(self.unet)

    def _sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return (batch_size, *self._call.image.shape[1:])

    def _start(self, timesteps, batch_size: int, generator, latents, device, dtype) -> tuple[torch.Tensor, ...]:
        """The last int(N · strength) timesteps and the input noised to the first of them (SDEdit); `latents`, if
        given, is the noise ε used for it (and the start itself at strength 1)."""
        call = self._call
        run_timesteps, _ = strength_timesteps(self.scheduler, call.strength)
        if latents is None:
            latents = randn_tensor(self._sample_shape(batch_size), generator=generator, device=device, dtype=dtype)
        noise, x0 = latents.to(device=device, dtype=dtype), call.image.to(device=device, dtype=dtype)
        if call.blend is not None:
            call.blend.x0, call.blend.noise, call.blend.timesteps = x0, noise, run_timesteps
        return run_timesteps, noised_start(self.scheduler, x0, noise, run_timesteps, call.strength)

    def _model_fn(self, class_labels, guidance_scale, batch_size: int):
        """The denoiser `fn(x_t, t)`: the plain UNet, or the classifier-free-guided class-conditional one."""
        if not self.is_class_conditional:
            if class_labels is not None or guidance_scale is not None:
                raise ValueError(
                    f"class_labels / guidance_scale need a class-conditional UNet; {type(self.unet).__name__} is "
                    f"unconditional (got class_labels={class_labels!r}, guidance_scale={guidance_scale!r})"
                )
            return lambda x_t, t: self.unet(x_t, t).sample
        if class_labels is None:
            raise ValueError(
                "class_labels is required: this UNet is class-conditional (ids in "
                f"[0, {self.num_classes - 1}] or names; guidance_scale=0 gives its unconditional model)"
            )
        guidance_scale = 2.0 if guidance_scale is None else guidance_scale
        ids = self.check_conditioning(class_labels, guidance_scale)
        self._guidance_scale = float(guidance_scale)
        labels = torch.tensor(ids, device=self._execution_device, dtype=torch.long)
        labels = broadcast_batch("class_labels", labels, batch_size)

        def guided_unet(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # w read at every step so that a step callback can change it (as in ClassConditionalDiffusionPipeline)
            return ClassifierFreeGuidance(self.unet, labels, self.guidance_scale, self.null_class_id)(x_t, t)

        return guided_unet

    def _check_size(self, height: int, width: int) -> None:
        factor = unet_downsampling(self.unet)
        if height % factor or width % factor:
            raise ValueError(
                f"height and width must be multiples of {factor} (the UNet downsamples {factor}×), got "
                f"{height}×{width}; pass height=/width= to resize the image"
            )

    @torch.no_grad()
    @with_sampling_arguments
    def __call__(
        self,
        image,
        strength: float = 0.8,
        mask_image=None,
        class_labels: ClassLabel | Sequence[ClassLabel] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        **sampling,
    ) -> ImagePipelineOutput | tuple:
        r"""Translate `image` (SDEdit), or repaint the white part of `mask_image` (inpainting).

        Args:
            image (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a list of them): the start images x_0 with values in
                [0, 1] (numpy HWC / NHWC, torch CHW / NCHW), with the model's channel count (PIL images are converted
                to L or RGB). A batch of 1 is repeated to the batch of `class_labels` / `mask_image`.
            strength (`float`, defaults to 0.8): s in [0, 1]: the last int(s · num_inference_steps) steps run,
                from the input noised to that step's level. s = 1 starts from pure noise (plain generation from the
                same noise); s = 0 runs no step and returns the input. 0 < s with int(s · N) = 0 raises.
            mask_image (same types as `image`, *optional*): 1 (white) = repaint, 0 (black) = keep (binarised at
                0.5), one channel (PIL: converted to L), the size of `image`. The kept region comes back exactly.
            class_labels (`int`, `str`, a list of them or a tensor of ids): for a class-conditional UNet (required
                there, refused for an unconditional one): each image's class, an id in [0, K) or an `id2label` name.
            guidance_scale (`float`, defaults to 2.0 for a class-conditional UNet): CFG's w ≥ 0 (diffusers'
                convention; 1 = conditional model, 0 = unconditional model). Refused for an unconditional UNet.
            height, width (`int`, *optional*): resize the image (and mask) to this size first (diffusers'
                `VaeImageProcessor`: Lanczos for PIL, nearest for arrays); by default the image's own size, which
                must be a multiple of the UNet's downsampling factor.
            latents (`torch.Tensor`, *optional*): here the noise ε of the start x_{t_s} = √ᾱ x_0 + √(1 − ᾱ) ε,
                shaped like the (resized) image batch.
        """
        strength = check_strength(strength)
        steps = len(sampling["timesteps"]) if sampling.get("timesteps") is not None else None
        check_strength_steps(strength, steps or sampling.get("num_inference_steps", _DEFAULT_STEPS))
        channels = self.unet.config.in_channels
        images = preprocess_image(image, channels, height, width)
        masks = None
        if mask_image is not None:
            native = preprocess_image(image, channels).shape[-2:] if height or width else images.shape[-2:]
            masks = preprocess_mask(mask_image, tuple(native), tuple(images.shape[-2:]))
        self._check_size(*images.shape[-2:])
        label_count = None
        if class_labels is not None and self.is_class_conditional:
            label_count = len(self.get_label_ids(class_labels))
        batch_size = common_batch_size(
            image=images.shape[0], mask_image=None if masks is None else masks.shape[0], class_labels=label_count
        )
        model_fn = self._model_fn(class_labels, guidance_scale, batch_size)
        images = broadcast_batch("image", images, batch_size)
        blend = None
        if masks is not None:
            callback = sampling.pop("callback_on_step_end", None)
            tensor_inputs = sampling.pop("callback_on_step_end_tensor_inputs", None) or ["latents"]
            check_callback_inputs(tensor_inputs, self._callback_tensor_inputs, callback)
            blend = InpaintingBlend(
                self.scheduler, images, broadcast_batch("mask_image", masks, batch_size),
                callback=callback, tensor_inputs=tuple(tensor_inputs),
            )  # fmt: skip
            sampling.update(callback_on_step_end=blend, callback_on_step_end_tensor_inputs=["latents"])
        self._call = _Img2ImgCall(image=images, strength=strength, blend=blend)
        return self._generate(model_fn, batch_size, **sampling)


# ----- latent ------------------------------------------------------------------------------------------------------
@dataclass
class _LatentImg2ImgCall:
    """One call's input for `_start` / `_after_step` (passed in `start_kwargs`, filled in by `_start`)."""

    images: torch.Tensor  # x_0 in pixels, (B or 1, C, H, W) in [−1, 1], one row per condition or one for all
    strength: float
    pixel_mask: torch.Tensor | None  # (B or 1, 1, H, W), 1 = repaint
    z0: torch.Tensor | None = None  # the encoded images, (total, C_latent, h, w)
    mask: torch.Tensor | None = None  # on the latent grid
    noise: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None


class LatentImg2ImgPipeline(LatentDiffusionPipeline):
    r"""Image-to-image (SDEdit) and inpainting (latent blending) with a latent diffusion model: the input is encoded
    with the VAE (posterior mean, scaled once), noised to the strength's timestep, denoised, decoded.

    Same components as [`LatentDiffusionPipeline`] (unconditional, class or text models); `from_pretrained` of a
    `LatentDiffusionPipeline` folder returns this class.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> LatentImg2ImgPipeline:
        """`LatentDiffusionPipeline.from_pretrained`, returning this class for a `LatentDiffusionPipeline` folder
        or repo too (same components). Arguments are diffusers'."""
        return as_pipeline_class(cls, super().from_pretrained(pretrained_model_name_or_path, **kwargs))

    def _start(
        self, timesteps, batch_size: int, height: int, width: int, generator, latents, device, dtype, img2img=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last int(N · strength) timesteps and the encoded image noised to the first (SDEdit). The noise is
        drawn first, as the text-to-image start draws it, so that strength 1 is plain generation from that noise."""
        call = img2img
        run_timesteps, _ = strength_timesteps(self.scheduler, call.strength)
        if latents is None:
            shape = self.latent_shape(batch_size, height, width)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        noise = latents.to(device=device, dtype=dtype)
        # The posterior mean, not a sample: deterministic, and it leaves the generator to the sampling noise.
        per_condition = batch_size // call.images.shape[0]  # num_images_per_prompt, or the whole batch for one image
        z0 = encode_latents(self.vae, call.images, sample=False).to(device=device, dtype=dtype)
        z0 = z0.repeat_interleave(per_condition, dim=0)
        if call.pixel_mask is not None:
            mask = latent_mask(call.pixel_mask, tuple(z0.shape[-2:])).to(device=device, dtype=dtype)
            call.mask = mask.repeat_interleave(batch_size // mask.shape[0], dim=0)
        call.z0, call.noise, call.timesteps = z0, noise, run_timesteps
        return run_timesteps, noised_start(self.scheduler, z0, noise, run_timesteps, call.strength)

    def _after_step(self, step_index: int, t, latents: torch.Tensor, start_kwargs: dict) -> torch.Tensor:
        """Latent blending: the kept region back in, noised to the next step's level (x_0's latents at the end)."""
        call = start_kwargs["img2img"]
        if call.mask is None:
            return latents
        return blend_known_region(self.scheduler, latents, call.z0, call.noise, call.timesteps, call.mask, step_index)

    def _input_batch(self, images, masks, prompt, class_labels, batch_size) -> int | None:
        """`batch_size` for an unconditional model (the image batch when not given); checks that image and mask
        batches are 1 or one per condition (prompt, class label, or unconditional image)."""
        kind = self.conditioning_type
        mask_batch = None if masks is None else masks.shape[0]
        if kind == "none":
            if batch_size is None:
                batch_size = common_batch_size(image=images.shape[0], mask_image=mask_batch)
            conditions = batch_size
        elif kind == "class":
            conditions = len(self.get_label_ids(class_labels))
        elif kind == "text":
            conditions = len(check_prompts("prompt", prompt))
        else:
            raise ValueError(f"conditioning type must be one of none/class/text, got {kind!r}")
        common_batch_size(image=images.shape[0], mask_image=mask_batch, conditions=conditions)
        return batch_size

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        strength: float = 0.8,
        mask_image=None,
        prompt: PromptArg = None,
        negative_prompt: PromptArg = None,
        class_labels: ClassLabel | Sequence[ClassLabel] | torch.Tensor | None = None,
        batch_size: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        keep_unmasked_pixels: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Translate `image` (SDEdit) or repaint the white part of `mask_image` (latent blending).

        Args:
            image (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a list of them): start images, values in [0, 1], with
                the VAE's `in_channels` (PIL images are converted to L or RGB). One image for all, or one per
                prompt / class label (repeated `num_images_per_prompt` times); for an unconditional model the image
                batch is the default `batch_size`.
            strength (`float`, defaults to 0.8): s in [0, 1]: the last int(s · num_inference_steps) steps run from
                the encoded image noised to that step's level. s = 1 starts from pure noise (= text-to-image from
                the same noise); s = 0 runs no step and returns the VAE reconstruction decode(encode(image)).
            mask_image (same types as `image`, *optional*): 1 (white) = repaint, 0 (black) = keep, binarised at 0.5,
                one channel, the size of `image`. A latent cell is repainted when any pixel of its f×f patch is.
            keep_unmasked_pixels (`bool`, defaults to True): with `mask_image`, paste the input's pixels back where
                the mask is 0 after decoding, so the kept region comes back exactly rather than as the VAE's
                reconstruction (diffusers' `apply_overlay`). Not applied to `output_type="latent"`.
            height, width (`int`, *optional*): resize the image (and mask) first; default the image's own size,
                which must be divisible by the VAE factor × the UNet's downsampling.
            latents (`torch.Tensor`, *optional*): here the noise ε of the start z_{t_s} = √ᾱ z_0 + √(1 − ᾱ) ε, of
                shape (B, C_latent, height / f, width / f).
            prompt, negative_prompt, class_labels, batch_size, guidance_scale, num_images_per_prompt,
            num_inference_steps, timesteps, generator, eta, output_type, return_dict, callback_on_step_end,
            callback_on_step_end_tensor_inputs: as [`LatentDiffusionPipeline.__call__`].
        """
        strength = check_strength(strength)
        check_strength_steps(strength, len(timesteps) if timesteps is not None else num_inference_steps)
        channels = self.vae.config.in_channels
        images = preprocess_image(image, channels, height, width)
        masks = None
        if mask_image is not None:
            native = preprocess_image(image, channels).shape[-2:] if height or width else images.shape[-2:]
            masks = preprocess_mask(mask_image, tuple(native), tuple(images.shape[-2:]))
        batch_size = self._input_batch(images, masks, prompt, class_labels, batch_size)
        call = _LatentImg2ImgCall(images=images, strength=strength, pixel_mask=masks)
        output = self._generate(
            prompt=prompt, negative_prompt=negative_prompt, class_labels=class_labels, batch_size=batch_size,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, height=images.shape[-2],
            width=images.shape[-1], num_inference_steps=num_inference_steps, timesteps=timesteps, generator=generator,
            latents=latents, eta=eta, output_type=output_type, return_dict=True,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, start_kwargs={"img2img": call},
        )  # fmt: skip
        result = output.images
        if masks is not None and keep_unmasked_pixels and output_type != "latent":
            result = self._paste_kept_pixels(result, call, output_type, num_images_per_prompt)
        return ImagePipelineOutput(images=result) if return_dict else (result,)

    def _paste_kept_pixels(self, result, call: _LatentImg2ImgCall, output_type: str, per_condition: int):
        """Where the mask is 0, the input's own pixels (in [0, 1]) replace the decoded ones."""
        total = call.z0.shape[0]
        repeat = total // call.images.shape[0]
        originals = (call.images.repeat_interleave(repeat, dim=0) / 2 + 0.5).clamp(0, 1)
        masks = call.pixel_mask.repeat_interleave(total // call.pixel_mask.shape[0], dim=0)
        decoded = as_nchw_tensor(result)
        pasted = torch.where(masks > 0.5, decoded, originals)
        return self.image_processor.postprocess(pasted, output_type=output_type, do_denormalize=[False] * total)
