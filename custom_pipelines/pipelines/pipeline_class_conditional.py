"""Class-conditional pixel-space diffusion with classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from custom_pipelines.models.class_conditioning import num_classes_of

from .guidance import (
    ClassifierFreeGuidance,
    GuidanceFn,
    GuidanceStrength,
    check_loss_guidance,
)
from .utils import (
    check_batch_and_steps,
    check_callback_inputs,
    check_generator,
    check_latents,
    postprocess_images,
    sample_pixel_diffusion,
    state_dtype,
    unet_sample_shape,
)

ClassLabel = int | str


def normalize_id2label(id2label: Mapping[int | str, str] | None, num_classes: int) -> dict[str, str] | None:
    """`{id: name}` with ids 0..K−1 → `{"0": name, ...}` (JSON's string keys, so a saved config reloads equal)."""
    if id2label is None:
        return None
    ids = sorted(int(key) for key in id2label)
    if ids != list(range(num_classes)):
        raise ValueError(f"id2label must name every class id 0..{num_classes - 1} once, got ids {ids}")
    names = [str(id2label[key]) for key in id2label]
    if len(set(names)) != len(names):
        raise ValueError(f"id2label names must be unique, got {names}")
    return {str(i): str(id2label[i] if i in id2label else id2label[str(i)]) for i in ids}


class ClassConditionalDiffusionPipeline(DiffusionPipeline):
    r"""Sample images of chosen classes from a class-conditional pixel-space diffusion model.

    Components:
        unet: a class-conditional model, `forward(sample, timestep, class_labels).sample`: diffusers'
            `UNet2DModel(class_embed_type=None, num_class_embeds=K + 1)` or our `ClassConcatUNet2DModel`. Class id K
            is the learned null class (the unconditional branch).
        scheduler ([`SchedulerMixin`]): any of ours or diffusers' (`Scheduler.from_config(pipe.scheduler.config)`).
        id2label (`dict[int, str]`, *optional*): class names, e.g. from a dataset's `ClassLabel` feature; stored in
            the pipeline config (`model_index.json`, string keys) so `class_labels=["three"]` works after reload.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self, unet: torch.nn.Module, scheduler: SchedulerMixin, id2label: dict[int, str] | dict[str, str] | None = None
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        id2label = normalize_id2label(id2label, num_classes_of(unet))
        self.register_to_config(id2label=id2label)
        self.labels = {name: int(i) for i, name in id2label.items()} if id2label else {}

    @property
    def num_classes(self) -> int:
        """K, the number of real classes (ids 0..K−1)."""
        return num_classes_of(self.unet)

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    def get_label_ids(self, class_labels: ClassLabel | Sequence[ClassLabel] | torch.Tensor) -> list[int]:
        """Class names (from `id2label`) and/or ids → ids in [0, K); ValueError naming the bad entry."""
        if class_labels is None:
            raise ValueError("class_labels must be a class id, a name or a non-empty list of them, got None")
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (numbers.Integral, str)):
            class_labels = [class_labels]
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                if label not in self.labels:
                    known = list(self.labels) or "none: this pipeline has no id2label, use integer ids"
                    raise ValueError(f"unknown class name {label!r} in class_labels; known names: {known}")
                ids.append(self.labels[label])
            elif isinstance(label, numbers.Integral) and not isinstance(label, bool):  # int, np.int64, ...
                if not 0 <= label < self.num_classes:
                    raise ValueError(f"class_labels ids must be in [0, {self.num_classes - 1}], got {label}")
                ids.append(int(label))
            else:
                raise ValueError(f"class_labels entries must be int ids or str names, got {label!r}")
        if not ids:
            raise ValueError(
                f"class_labels must be a class id, a name or a non-empty list of them, got {class_labels!r}"
            )
        return ids

    def _sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return unet_sample_shape(self.unet, batch_size)

    def check_inputs(
        self,
        class_labels,
        guidance_scale,
        num_inference_steps,
        generator,
        latents,
        output_type,
        callback,
        tensor_inputs,
        guidance_fn,
        guidance_strength,
    ) -> list[int]:
        """Validate every argument (ValueError naming it, its range and value); returns the class ids."""
        ids = self.get_label_ids(class_labels)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a float >= 0, got {guidance_scale!r}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite float >= 0, got {guidance_scale}")
        check_batch_and_steps(len(ids), num_inference_steps, output_type)
        check_generator(generator, len(ids))
        check_latents(latents, self._sample_shape(len(ids)))
        check_callback_inputs(tensor_inputs, self._callback_tensor_inputs, callback)
        check_loss_guidance(guidance_fn, guidance_strength, self.scheduler)
        return ids

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabel | Sequence[ClassLabel] | torch.Tensor,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        guidance_fn: GuidanceFn | None = None,
        guidance_strength: GuidanceStrength = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate one image per entry of `class_labels`.

        Args:
            class_labels (`int`, `str` or a list of them, or a `torch.Tensor` of ids): the class of each image, as
                an id in [0, K) or a name from `id2label` (e.g. `[3, "seven"]`).
            guidance_scale (`float`, defaults to 2.0): w ≥ 0 in ε̃ = ε_u + w (ε_c − ε_u) (diffusers' convention).
                w = 1 is the plain conditional model, w = 0 the unconditional one (null class); both run one
                forward pass per step. Other values run one batched pass over [cond; null] (twice the batch). Larger
                w: more class-typical, less diverse images.
            num_inference_steps (`int`, defaults to 50): denoising steps, 1 ≤ steps ≤ `num_train_timesteps`.
            timesteps (`list[int]`, *optional*): strictly descending timesteps in [0, num_train_timesteps) to use
                instead of `num_inference_steps` evenly spaced ones (diffusers' convention), e.g. a schedule from
                `optimize_timesteps`. The last one steps to the clean image. Needs a scheduler whose `set_timesteps`
                takes `timesteps` (all of ours).
            generator (`torch.Generator` or list of them): a list gives one per image, so a batch equals the same
                images made one by one.
            latents (`torch.Tensor` of shape `(len(class_labels), C, H, W)`): start noise x_T instead of a fresh draw.
            eta (`float`, defaults to 0.0): DDIM's η, passed only to schedulers whose `step` takes it.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` (values in [0, 1]) or `"latent"`.
            return_dict (`bool`, defaults to True): return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`): `fn(pipe, step_index, timestep, tensors: dict) -> dict`.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to it.
            guidance_fn (`Callable`, *optional*): loss guidance on top of CFG, `fn(x0_pred) -> loss` (scalar or
                `[B]`); x_t ← x_t − s ∇_{x_t} loss before each scheduler step (see `pipelines/guidance.py`).
            guidance_strength (`float` or `Callable`, defaults to 1.0): s ≥ 0, or `fn(step_index, t) -> s`.
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        ids = self.check_inputs(
            class_labels,
            guidance_scale,
            num_inference_steps,
            generator,
            latents,
            output_type,
            callback_on_step_end,
            tensor_inputs,
            guidance_fn,
            guidance_strength,
        )
        model_dtype, dtype = self.unet.dtype, state_dtype(self.unet.dtype)

        # The guided denoiser: ε̃(x_t, t) = ε_u + w (ε_c − ε_u), one batched pass over [y; ∅] when w ∉ {0, 1}.
        labels = torch.tensor(ids, device=self._execution_device, dtype=torch.long)
        cfg = ClassifierFreeGuidance(self.unet, labels, guidance_scale, self.null_class_id)

        def model_fn(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return cfg(model_input.to(model_dtype), t).to(dtype)

        latents = sample_pixel_diffusion(
            self,
            model_fn,
            self._sample_shape(len(ids)),
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            generator=generator,
            latents=latents,
            eta=eta,
            guidance_fn=guidance_fn,
            guidance_strength=guidance_strength,
            callback_on_step_end=callback_on_step_end,
            tensor_inputs=tensor_inputs,
        )

        # [-1, 1] → requested output type.
        images = postprocess_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
