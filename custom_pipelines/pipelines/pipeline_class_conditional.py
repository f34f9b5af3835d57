"""Class-conditional pixel-space diffusion with classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from diffusers import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from custom_pipelines.models.class_conditioning import num_classes_of

from .guidance import ClassifierFreeGuidance
from .pixel_diffusion import PixelDiffusionPipeline, with_sampling_arguments

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


class ClassConditionalDiffusionPipeline(PixelDiffusionPipeline):
    r"""Sample images of chosen classes from a class-conditional pixel-space diffusion model.

    Components:
        unet: a class-conditional model, `forward(sample, timestep, class_labels).sample`: diffusers'
            `UNet2DModel(class_embed_type=None, num_class_embeds=K + 1)` or our `ClassConcatUNet2DModel`. Class id K
            is the learned null class (the unconditional branch).
        scheduler ([`SchedulerMixin`]): any of ours or diffusers' (`Scheduler.from_config(pipe.scheduler.config)`).
        id2label (`dict[int, str]`, *optional*): class names, e.g. from a dataset's `ClassLabel` feature; stored in
            the pipeline config (`model_index.json`, string keys) so `class_labels=["three"]` works after reload.
    """

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

    @property
    def guidance_scale(self) -> float:
        """w of the current (or last) call; a step callback may change it (`pipe._guidance_scale = 1.0` stops CFG)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a step runs the guided two-branch prediction (w ∉ {0, 1}; w = 1 and w = 0 need one pass)."""
        return self._guidance_scale not in (0.0, 1.0)

    def check_conditioning(self, class_labels, guidance_scale) -> list[int]:
        """Validate the class arguments (ValueError naming the argument, its range and value); returns the class ids.
        The sampling arguments are checked by `check_inputs`."""
        ids = self.get_label_ids(class_labels)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a float >= 0, got {guidance_scale!r}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite float >= 0, got {guidance_scale}")
        return ids

    @torch.no_grad()
    @with_sampling_arguments
    def __call__(
        self, class_labels: ClassLabel | Sequence[ClassLabel] | torch.Tensor, guidance_scale: float = 2.0, **sampling
    ) -> ImagePipelineOutput | tuple:
        r"""Generate one image per entry of `class_labels`.

        Args:
            class_labels (`int`, `str` or a list of them, or a `torch.Tensor` of ids): the class of each image, as
                an id in [0, K) or a name from `id2label` (e.g. `[3, "seven"]`).
            guidance_scale (`float`, defaults to 2.0): w ≥ 0 in ε̃ = ε_u + w (ε_c − ε_u) (diffusers' convention).
                w = 1 is the plain conditional model, w = 0 the unconditional one (null class); both run one
                forward pass per step. Other values run one batched pass over [cond; null] (twice the batch). Larger
                w: more class-typical, less diverse images. Loss guidance (`guidance_fn`) applies on top of CFG.
        """
        ids = self.check_conditioning(class_labels, guidance_scale)
        self._guidance_scale = float(guidance_scale)
        labels = torch.tensor(ids, device=self._execution_device, dtype=torch.long)

        def guided_unet(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # ε̃(x_t, t) = ε_u + w (ε_c − ε_u), w read at every step so that a step callback can change it.
            return ClassifierFreeGuidance(self.unet, labels, self.guidance_scale, self.null_class_id)(x_t, t)

        return self._generate(guided_unet, len(ids), **sampling)
