"""Latent diffusion (Rombach et al. 2022): the reverse process runs on the latents of a frozen `AutoencoderKL`,
unconditional, class-conditional with classifier-free guidance, or text-conditional through cross-attention.

diffusers' `LDMTextToImagePipeline` cannot serve our models: it pads every prompt to 77 tokens and sizes the latents
as `height // 8`. Here the latent side is `height // 2^(len(vae.block_out_channels) − 1)` (f = 2, 4, 8 ... as the VAE
really downsamples), the prompt length is the tokenizer's `model_max_length`, and a text model is encoded exactly as
diffusers' `StableDiffusionPipeline` encodes it, so the same components also run there (docs/latent_diffusion.md).

Subclasses (img2img, inpainting) reuse the whole call through `_generate(..., start_kwargs=...)` and override two
hooks: `_start` (which timesteps to run and the latents at the first of them: SDEdit starts from a noised image)
and `_after_step` (e.g. blend the known region back in after every step).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from custom_pipelines.hub.mixin import HubPipelineMixin
from custom_pipelines.lora.mixin import LoraMixin
from custom_pipelines.models.autoencoder import decode_latents
from custom_pipelines.models.class_conditioning import conditioning_method, num_classes_of
from custom_pipelines.models.text_encoder import encode_text

from .guidance import (
    ClassifierFreeGuidance,
    check_student_steps,
    combine_cfg,
    guided_model_kwargs,
    has_guidance_embedding,
)
from .pipeline_class_conditional import ClassConditionalDiffusionPipeline, ClassLabel, normalize_id2label
from .utils import (
    check_callback_inputs,
    check_generator,
    check_latents,
    check_output_type,
    check_positive_int,
    extra_step_kwargs,
    run_step_callback,
    set_scheduler_timesteps,
    state_dtype,
)

ConditioningType = Literal["none", "class", "text"]
PromptArg = str | Sequence[str] | None


def vae_scale_factor_of(vae) -> int:
    """f, the VAE's spatial downsampling: 2 per encoder block after the first (1, 2, 4, 8, ...)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def unet_downsampling_of(unet) -> int:
    """The UNet's own total downsampling (2 per block after the first): latent sides must be divisible by it."""
    config = unet.config
    return 2 ** (len(config.block_out_channels) - 1)


class LatentDiffusionPipeline(LoraMixin, HubPipelineMixin, DiffusionPipeline):
    r"""Sample images from a latent diffusion model: denoise latents, then decode them with the VAE.

    The UNet decides the kind of conditioning (`conditioning_type`):
    - `"none"`: a `UNet2DModel` without class embedding; `batch_size` images.
    - `"class"`: `UNet2DModel(class_embed_type=None, num_class_embeds=K + 1)` or our `ClassConcatUNet2DModel`; class
      id K is the learned null class of classifier-free guidance (as in `ClassConditionalDiffusionPipeline`).
    - `"text"`: a `UNet2DConditionModel` whose `cross_attention_dim` is the text encoder's hidden size; the empty
      prompt "" is the unconditional branch (captions are dropped to "" in training).

    Components:
        vae ([`AutoencoderKL`]): frozen autoencoder; its config's `scaling_factor` (and `shift_factor`) are applied
            once on encode and undone once on decode (`custom_pipelines.models.autoencoder`).
        unet: the latent denoiser (see above); `in_channels` = the VAE's `latent_channels`.
        scheduler ([`SchedulerMixin`]): any of ours or diffusers' (`Scheduler.from_config(pipe.scheduler.config)`).
        text_encoder (*optional*): a transformers text model (`BertModel`, `CLIPTextModel`); text models only.
        tokenizer (*optional*): its tokenizer; `model_max_length` is the padded prompt length.
        id2label (`dict[int, str]`, *optional*): class names of a class model (stored in `model_index.json`).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: torch.nn.Module,
        scheduler: SchedulerMixin,
        text_encoder: torch.nn.Module | None = None,
        tokenizer=None,
        id2label: dict[int, str] | dict[str, str] | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        if id2label is not None and self.conditioning_type != "class":
            raise ValueError(f"id2label needs a class-conditional UNet; this one is {self.conditioning_type!r}")
        id2label = normalize_id2label(id2label, self.num_classes) if id2label is not None else None
        self.register_to_config(id2label=id2label)
        self.labels = {name: int(i) for i, name in id2label.items()} if id2label else {}
        self.vae_scale_factor = vae_scale_factor_of(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ----- what the model is -------------------------------------------------------------------------------------
    @property
    def conditioning_type(self) -> ConditioningType:
        """`"text"` (cross-attention UNet), `"class"` (class-embedding or class-concat UNet) or `"none"`."""
        if isinstance(self.unet, UNet2DConditionModel):
            return "text"
        try:
            conditioning_method(self.unet)
        except ValueError:
            return "none"
        return "class"

    @property
    def num_classes(self) -> int:
        """K, the number of real classes (ids 0..K−1) of a class model; 0 otherwise."""
        return num_classes_of(self.unet) if self.conditioning_type == "class" else 0

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    # class names / ids → ids, exactly as the pixel class-conditional pipeline reads them
    get_label_ids = ClassConditionalDiffusionPipeline.get_label_ids

    @property
    def guidance_scale(self) -> float:
        """w of the current (or last) call; a step callback may change it (`pipe._guidance_scale = 1.0`)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a step runs the two-branch prediction (w ∉ {0, 1}; w = 1 and w = 0 need one pass)."""
        return self.conditioning_type != "none" and self._guidance_scale not in (0.0, 1.0)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ----- inputs ----------------------------------------------------------------------------------------------------
    def _conditions(self, prompt: PromptArg, negative_prompt: PromptArg, class_labels, batch_size: int | None):
        """The per-image conditions before `num_images_per_prompt`: prompts, class ids or `batch_size` × None."""
        kind = self.conditioning_type
        if kind != "text" and (prompt is not None or negative_prompt is not None):
            raise ValueError(f"prompt / negative_prompt need a text-conditional model; this one is {kind!r}")
        if kind != "class" and class_labels is not None:
            raise ValueError(f"class_labels need a class-conditional model; this one is {kind!r}")
        if kind == "none":
            if batch_size is not None:
                check_positive_int("batch_size", batch_size)
            return [None] * (batch_size or 1)
        if kind == "class":
            conditions = self.get_label_ids(class_labels)
        elif kind == "text":
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("a text-conditional pipeline needs its text_encoder and tokenizer components")
            conditions = check_prompts("prompt", prompt)
            if negative_prompt is not None:
                negatives = check_prompts("negative_prompt", negative_prompt)
                if len(negatives) not in (1, len(conditions)):
                    raise ValueError(
                        f"negative_prompt must be one string or a list of len(prompt)={len(conditions)}, "
                        f"got {len(negatives)} entries"
                    )
        else:
            raise ValueError(f"conditioning type must be one of none/class/text, got {kind!r}")
        if batch_size is not None and batch_size != len(conditions):
            raise ValueError(
                f"batch_size={batch_size} does not match the {len(conditions)} entries of "
                f"{'prompt' if kind == 'text' else 'class_labels'} (leave batch_size out for conditional models)"
            )
        return conditions

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the UNet's training latents: `sample_size` × the VAE factor."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    def check_inputs(
        self,
        prompt: PromptArg,
        negative_prompt: PromptArg,
        class_labels,
        batch_size: int | None,
        guidance_scale: float | None,
        num_images_per_prompt: int,
        height: int | None,
        width: int | None,
        num_inference_steps: int,
        generator,
        latents: torch.Tensor | None,
        output_type: str,
        callback: Callable | None,
        tensor_inputs: list[str],
    ) -> tuple[list, int, int]:
        """Validate every argument (ValueError / TypeError naming it, its range and value) before any work.

        Returns the per-prompt conditions (prompts, class ids or Nones; before `num_images_per_prompt`), height and
        width."""
        conditions = self._conditions(prompt, negative_prompt, class_labels, batch_size)
        check_positive_int("num_images_per_prompt", num_images_per_prompt)
        check_positive_int("num_inference_steps", num_inference_steps)
        check_student_steps(self.scheduler, num_inference_steps)  # a distilled student's grid (LCMScheduler)
        check_output_type(output_type)
        check_guidance_scale(guidance_scale, self.conditioning_type)
        default_height, default_width = self.default_size()
        height = default_height if height is None else height
        width = default_width if width is None else width
        multiple = self.vae_scale_factor * unet_downsampling_of(self.unet)
        for name, value in (("height", height), ("width", width)):
            check_positive_int(name, value)
            if value % multiple != 0:
                raise ValueError(
                    f"{name} must be divisible by {multiple} (VAE factor {self.vae_scale_factor} × UNet "
                    f"downsampling {unet_downsampling_of(self.unet)}), got {value}"
                )
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise ValueError(
                f"unet.in_channels={self.unet.config.in_channels} must equal vae.latent_channels="
                f"{self.vae.config.latent_channels}"
            )
        total = len(conditions) * num_images_per_prompt
        check_generator(generator, total)
        check_latents(latents, self.latent_shape(total, height, width))
        allowed = self._callback_tensor_inputs if self.conditioning_type == "text" else ["latents"]
        check_callback_inputs(tensor_inputs, allowed, callback)
        return conditions, height, width

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return (batch_size, self.unet.config.in_channels, height // f, width // f)

    # ----- the conditioning ----------------------------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_embeds, negative_prompt_embeds)`, each `[len(prompt) · num_images_per_prompt, L, D]`, L the
        tokenizer's `model_max_length`; the copies of one prompt are adjacent. `negative_prompt` None is "" (the
        unconditional branch); one string applies to every prompt. Encoded as `StableDiffusionPipeline` does."""
        device = device if device is not None else self._execution_device
        prompts = check_prompts("prompt", prompt)
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = check_prompts("negative_prompt", negative_prompt)
            negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt must have 1 or {len(prompts)} entries, got {len(negatives)}")
        embeds = []
        for texts in (prompts, negatives):
            hidden = encode_text(self.text_encoder, self.tokenizer, texts, device)
            hidden = hidden.to(dtype=self.text_encoder.dtype, device=device)
            batch, length, _ = hidden.shape
            embeds.append(hidden.repeat(1, num_images_per_prompt, 1).view(batch * num_images_per_prompt, length, -1))
        return embeds[0], embeds[1]

    def _conditioning_inputs(
        self, conditions: list, negative_prompt: PromptArg, num_images_per_prompt: int, device
    ) -> dict[str, torch.Tensor]:
        """The tensors the denoiser reads, one row per image: class ids, or prompt and negative-prompt embeddings
        (each prompt encoded once, then repeated, as `StableDiffusionPipeline` does)."""
        kind = self.conditioning_type
        if kind == "none":
            return {}
        if kind == "class":
            ids = torch.tensor(conditions, device=device, dtype=torch.long)
            return {"class_labels": ids.repeat_interleave(num_images_per_prompt)}
        prompt_embeds, negative_embeds = self.encode_prompt(conditions, negative_prompt, num_images_per_prompt, device)
        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds}

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, conditioning: dict[str, torch.Tensor]):
        """The (guided) model output at x_t: ε̃ = ε_u + w (ε_c − ε_u) (Ho & Salimans 2022), w read at every step.

        Text: one batched pass over [uncond; cond] (diffusers' order, so the numbers match `StableDiffusionPipeline`
        for w > 1); class: our `ClassifierFreeGuidance` wrapper; w = 1 (conditional) and w = 0 (unconditional) run
        one pass.
        """
        kind, w, unet = self.conditioning_type, self.guidance_scale, self.unet
        if kind == "none":
            return unet(model_input, t).sample
        if kind == "class":
            return ClassifierFreeGuidance(unet, conditioning["class_labels"], w, self.null_class_id)(model_input, t)
        if kind != "text":
            raise ValueError(f"conditioning type must be one of none/class/text, got {kind!r}")
        cond, uncond = conditioning["prompt_embeds"], conditioning["negative_prompt_embeds"]
        if has_guidance_embedding(unet):  # a distilled student reads w itself: one pass (custom_pipelines.distill)
            w_kwargs = guided_model_kwargs(unet, w, model_input.shape[0], model_input.device, model_input.dtype)
            return unet(model_input, t, encoder_hidden_states=cond, **w_kwargs).sample
        if w == 1.0:
            return unet(model_input, t, encoder_hidden_states=cond).sample
        if w == 0.0:
            return unet(model_input, t, encoder_hidden_states=uncond).sample
        t_in = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim > 0 else t
        output = unet(torch.cat([model_input] * 2), t_in, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = output.chunk(2)
        return combine_cfg(out_cond, out_uncond, w, model_input.shape[1])

    # ----- the hooks subclasses override ---------------------------------------------------------------------------
    def prepare_latents(self, batch_size: int, height: int, width: int, dtype, device, generator, latents=None):
        """x_T ~ N(0, I) (or the given `latents`) scaled to the first step's noise level (`init_noise_sigma`)."""
        if latents is None:
            shape = self.latent_shape(batch_size, height, width)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def _start(
        self, timesteps, batch_size: int, height: int, width: int, generator, latents, device, dtype, **start_kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The timesteps to run and the latents at the first of them: all of them, from noise. An img2img subclass
        returns the tail of `timesteps` and the encoded image noised to its first one. `start_kwargs` is the dict a
        subclass gave `_generate`; it may add entries there for `_after_step`."""
        return timesteps, self.prepare_latents(batch_size, height, width, dtype, device, generator, latents)

    def _after_step(self, step_index: int, t, latents: torch.Tensor, start_kwargs: dict) -> torch.Tensor:
        """Called on x_{t-1} after every scheduler step (inpainting puts the known region back); identity here."""
        return latents

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in about [-1, 1] (the VAE's scaling undone exactly once)."""
        return decode_latents(self.vae, latents)

    # ----- the call ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
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
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            prompt (`str` or `list[str]`): text models only; one image per prompt (× `num_images_per_prompt`).
                "" is the unconditional branch.
            negative_prompt (`str` or `list[str]`, *optional*): the text of the unconditional branch (default "");
                one string, or one per prompt.
            class_labels (`int`, `str` or a list of them, or a tensor of ids): class models only; ids in [0, K) or
                names from `id2label`.
            batch_size (`int`, *optional*): unconditional models: the number of images (default 1). Conditional
                models size the batch from `prompt` / `class_labels`; a batch_size that differs raises.
            guidance_scale (`float`, *optional*, defaults to 2.0 for conditional models): w ≥ 0 in
                ε̃ = ε_u + w (ε_c − ε_u). w = 1 is the conditional model, w = 0 the unconditional one; both run one
                pass per step (diffusers' pipelines treat every w ≤ 1 as 1). Not for unconditional models.
            num_images_per_prompt (`int`, defaults to 1): images per prompt / class label / unconditional image.
            height, width (`int`, *optional*): output size in pixels, divisible by the VAE factor × the UNet's
                downsampling; default the UNet's `sample_size` × the VAE factor.
            num_inference_steps (`int`, defaults to 50): denoising steps, 1 ≤ steps ≤ `num_train_timesteps`.
            timesteps (`list[int]`, *optional*): custom strictly descending timesteps (schedulers that take them).
            generator (`torch.Generator` or a list, one per image): makes sampling deterministic.
            latents (`torch.Tensor` `(B, C_latent, height / f, width / f)`, *optional*): start noise x_T.
            eta (`float`, defaults to 0.0): DDIM's η, passed only to schedulers whose `step` takes it.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, C in [0, 1]), `"pt"` (B, C, H, W
                in [0, 1]) or `"latent"` (the denoised, still scaled latents; no decoding).
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`): `fn(pipe, step_index, timestep, tensors) -> dict`, after every step;
                returned tensors replace the pipeline's; `pipe._interrupt = True` stops after this step.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): `latents`, and for text
                models `prompt_embeds` / `negative_prompt_embeds`.
        """
        return self._generate(
            prompt=prompt, negative_prompt=negative_prompt, class_labels=class_labels, batch_size=batch_size,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, height=height, width=width,
            num_inference_steps=num_inference_steps, timesteps=timesteps, generator=generator, latents=latents,
            eta=eta, output_type=output_type, return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip

    def _generate(
        self,
        *,
        prompt: PromptArg,
        negative_prompt: PromptArg,
        class_labels,
        batch_size: int | None,
        guidance_scale: float | None,
        num_images_per_prompt: int,
        height: int | None,
        width: int | None,
        num_inference_steps: int,
        timesteps: list[int] | None,
        generator,
        latents: torch.Tensor | None,
        eta: float,
        output_type: str,
        return_dict: bool,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        start_kwargs: dict | None = None,
    ) -> ImagePipelineOutput | tuple:
        """The body of `__call__` (same arguments), plus `start_kwargs` for a subclass's `_start` / `_after_step`."""
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        conditions, height, width = self.check_inputs(
            prompt, negative_prompt, class_labels, batch_size, guidance_scale, num_images_per_prompt, height, width,
            num_inference_steps, generator, latents, output_type, callback_on_step_end, tensor_inputs,
        )  # fmt: skip
        start_kwargs = {} if start_kwargs is None else start_kwargs
        self._guidance_scale = 2.0 if guidance_scale is None else float(guidance_scale)
        self._interrupt = False
        device, scheduler = self._execution_device, self.scheduler
        # x_t stays fp32 (fp64 for an fp64 UNet) when the UNet runs in bf16/fp16: rounding would accumulate.
        model_dtype, dtype = self.unet.dtype, state_dtype(self.unet.dtype)

        # 1. the conditioning: class ids, or prompt / negative-prompt embeddings (encoded once)
        conditioning = self._conditioning_inputs(conditions, negative_prompt, num_images_per_prompt, device)
        batch = len(conditions) * num_images_per_prompt
        # 2. timesteps t_N > … > t_1 (first: σ-space schedulers derive init_noise_sigma from them)
        set_scheduler_timesteps(scheduler, num_inference_steps, timesteps, device)
        # 3. z_T ~ N(0, I) at the first step's noise level (img2img starts later, from a noised image: `_start`)
        run_timesteps, latents = self._start(
            scheduler.timesteps, batch, height, width, generator, latents, device, dtype, **start_kwargs
        )
        self._num_timesteps = len(run_timesteps)
        step_kwargs = extra_step_kwargs(scheduler, generator, eta)
        # 4. predict (guided), step z_t → z_{t-1}, let a subclass and the step callback act on z_{t-1}
        for i, t in enumerate(self.progress_bar(run_timesteps)):
            if self.interrupt:
                break
            model_input = scheduler.scale_model_input(latents, t).to(model_dtype)
            cond = {k: v.to(model_dtype) if v.is_floating_point() else v for k, v in conditioning.items()}
            model_output = self.predict(model_input, t, cond).to(dtype)
            latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            latents = self._after_step(i, t, latents, start_kwargs)
            state = {"latents": latents, **conditioning}
            tensors = run_step_callback(self, callback_on_step_end, i, t, tensor_inputs, state)
            latents = tensors["latents"]
            conditioning = {k: tensors[k] for k in conditioning}
        # 5. decode z_0 with the VAE → the requested output type
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(self.decode_latents(latents).float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def check_prompts(name: str, prompt) -> list[str]:
    """A string or a non-empty list of strings → the list; TypeError (wrong type) or ValueError (None, empty list)
    naming the argument otherwise."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt is None:
        raise ValueError(f"{name} is required for a text-conditional model (\"\" is the unconditional branch)")
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")
    if not prompt:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got an empty list")
    return list(prompt)


def check_guidance_scale(guidance_scale, conditioning_type: ConditioningType) -> None:
    if guidance_scale is None:
        return
    if conditioning_type == "none":
        raise ValueError(f"guidance_scale needs a conditional model (class or text), got {guidance_scale}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise TypeError(f"guidance_scale must be a float >= 0, got {guidance_scale!r}")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite float >= 0, got {guidance_scale}")
