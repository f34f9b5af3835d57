"""From the sampling commands' flags to a loaded pipeline's call arguments: the one place where `sample`
(`training/sample.py`) and `evaluate` (`custom_pipelines.evaluation.cli`) decide what each pipeline type is given.

A pipeline is described by what its `__call__` takes and what its model is (`PipelineInputs`), not by its class name,
so diffusers' own pipelines and subclasses are handled alike:

- its condition: `"none"` (`batch_size` images), `"class"` (`class_labels`; the UNet is class-conditional) or
  `"text"` (`prompt`; `LatentDiffusionPipeline.conditioning_type == "text"`);
- whether it takes an input image (img2img, super-resolution, CycleGAN). `--image` on an unconditional,
  class-conditional or latent diffusion pipeline runs it as its img2img pipeline (SDEdit) with the same components,
  as diffusers' `AutoPipelineForImage2Image.from_pipe` does; img2img inputs are resized to the model's sample size;
- whether it is seeded (takes a `generator`): super-resolution and CycleGAN are deterministic and get none.

Per-sample inputs (class labels, prompts, input images) are cycled over the samples. Sample i is drawn with its own
`torch.Generator`, seeded from a master generator exactly as `pipelines.utils.sample_images` does, so an image does
not depend on the batch size and `sample --seed s` draws the images `evaluate --seed s` scores.

A flag that does not apply to the loaded pipeline is a ValueError naming the flag and the pipeline class, never
silently ignored. Importing this module costs no torch (the parsers call `add_conditioning_args`).
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .cli import parse_class_labels

Condition = Literal["none", "class", "text"]


def add_conditioning_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say what each sample is conditioned on; each applies only to the pipeline types that take it."""
    group = parser.add_argument_group("conditioning (a flag the loaded pipeline does not take is an error)")
    group.add_argument(
        "--prompt", nargs="+", default=None, help="text-conditional models: one or more prompts, cycled"
    )
    group.add_argument(
        "--class_labels",
        default=None,
        help="class-conditional models: 'all' (the default: every class, balanced), or ids such as '3,5' (cycled); "
        "'none' is accepted only for models without classes",
    )
    group.add_argument(
        "--image",
        default=None,
        help="an input image file or a folder of them (sorted by name): super-resolution and CycleGAN pipelines, and "
        "img2img (SDEdit) with any diffusion pipeline, whose inputs are resized to the model's sample size",
    )
    group.add_argument(
        "--mask_image", default=None, help="img2img: one inpainting mask for all inputs (white = repaint)"
    )
    group.add_argument("--strength", type=float, default=None, help="img2img: s in [0, 1] (default 0.8)")
    group.add_argument("--direction", default=None, help="CycleGAN: a_to_b (the default) or b_to_a")


def check_conditioning_args(args: argparse.Namespace) -> None:
    """What can be checked before anything is loaded (no torch): ValueError naming the flag."""
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
    parse_class_labels(args.class_labels, 1)  # the syntax only: 'all', 'none' or comma-separated ints
    if args.prompt is not None and not all(p.strip() for p in args.prompt):
        raise ValueError(f"--prompt entries must be non-empty strings, got {args.prompt}")
    for flag in ("image", "mask_image"):
        path = getattr(args, flag)
        if path is not None and not os.path.exists(path):
            raise ValueError(f"--{flag} {path} does not exist (give an image file or a folder of images)")


# ----- what a pipeline takes -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineInputs:
    """What a loaded pipeline's `__call__` takes (read from its signature and its model)."""

    name: str  # the class name, for messages
    parameters: frozenset[str]
    takes_any: bool  # `**kwargs`: any keyword goes through
    condition: Condition
    num_classes: int | None  # K of a class model; None when not class-conditional or unknown
    takes_image: bool
    seeded: bool  # takes a `generator`

    def takes(self, parameter: str) -> bool:
        return parameter in self.parameters or self.takes_any


def describe_pipeline(pipe) -> PipelineInputs:
    """The `PipelineInputs` of `pipe`."""
    parameters = inspect.signature(pipe.__call__).parameters.values()
    names = frozenset(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    condition, num_classes = _condition_of(pipe, names)
    seeded = "generator" in names or takes_any
    return PipelineInputs(type(pipe).__name__, names, takes_any, condition, num_classes, "image" in names, seeded)


def _condition_of(pipe, names: frozenset[str]) -> tuple[Condition, int | None]:
    kind = getattr(pipe, "conditioning_type", None)  # LatentDiffusionPipeline reads it from its UNet
    if kind is not None:
        return kind, (pipe.num_classes if kind == "class" else None)
    if "class_labels" in names:
        from .models.class_conditioning import num_classes_of

        unet = pipe.components.get("unet")
        if unet is None:
            return "class", None  # labels for a model this module cannot inspect
        try:
            return "class", num_classes_of(unet)
        except ValueError:  # e.g. DiffusionImg2ImgPipeline on an unconditional UNet
            return "none", None
    if "prompt" in names:
        return "text", None
    return "none", None


def prepare_pipeline(pipe, args: argparse.Namespace):
    """`--image` (our diffusion pipelines become their img2img pipeline) and `--scheduler`; returns the pipeline."""
    if args.image is not None:
        pipe = with_image_input(pipe)
    if args.scheduler is not None:
        scheduler = pipe.components.get("scheduler")
        if scheduler is None:
            raise ValueError(f"--scheduler does not apply to {type(pipe).__name__}: it has no scheduler")
        from .schedulers import scheduler_from_name

        pipe.scheduler = scheduler_from_name(args.scheduler, scheduler.config)
    return pipe


def with_image_input(pipe):
    """`pipe` itself when it takes an input image; an unconditional or class-conditional pixel pipeline as
    `DiffusionImg2ImgPipeline`, a `LatentDiffusionPipeline` as `LatentImg2ImgPipeline` (same components); any other
    pipeline unchanged (`check_flags` then refuses `--image`)."""
    from .pipelines.img2img import as_pipeline_class
    from .pipelines.pipeline_img2img import DiffusionImg2ImgPipeline, LatentImg2ImgPipeline
    from .pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
    from .pipelines.pixel_diffusion import PixelDiffusionPipeline

    if "image" in inspect.signature(pipe.__call__).parameters:
        return pipe
    if isinstance(pipe, LatentDiffusionPipeline):
        cls = LatentImg2ImgPipeline
    elif isinstance(pipe, PixelDiffusionPipeline):
        cls = DiffusionImg2ImgPipeline
    else:
        return pipe
    converted = as_pipeline_class(cls, pipe)
    converted.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return converted


def check_flags(info: PipelineInputs, args: argparse.Namespace) -> None:
    """ValueError naming the flag and the pipeline class for a flag that does not apply, or a missing required one."""

    def refuse(flag: str, why: str) -> None:
        raise ValueError(f"--{flag} does not apply to {info.name}: {why}")

    def given(flag: str) -> bool:
        return getattr(args, flag, None) is not None

    no_parameter = "its __call__ does not take [{!r}]".format
    if given("prompt") and info.condition != "text":
        refuse("prompt", f"its model is not text-conditional (it is {_condition_words(info)})")
    if given("class_labels") and args.class_labels != "none" and info.condition != "class":
        why = "its model is not class-conditional" if "class_labels" in info.parameters else None
        refuse("class_labels", why or no_parameter("class_labels"))
    if args.class_labels == "none" and info.condition == "class":
        raise ValueError(
            f"--class_labels none: {info.name} is class-conditional and needs class labels (leave the flag out for "
            "all classes; --guidance_scale 0 samples its unconditional model)"
        )
    if given("num_classes") and info.condition != "class":
        refuse("num_classes", f"its model has no classes (it is {_condition_words(info)})")
    if given("guidance_scale"):
        if not info.takes("guidance_scale"):
            refuse("guidance_scale", no_parameter("guidance_scale"))
        if info.condition == "none":
            refuse("guidance_scale", "its model is unconditional (guidance needs class labels or a prompt)")
    for flag in ("image", "mask_image", "strength", "direction", "num_inference_steps", "timesteps"):
        if given(flag) and not info.takes(flag):
            refuse(flag, no_parameter(flag))
    if given("direction"):
        from .pipelines.pipeline_cyclegan import DIRECTIONS

        if args.direction not in DIRECTIONS:
            raise ValueError(f"--direction must be one of {', '.join(DIRECTIONS)}, got {args.direction!r}")
    if info.condition == "text" and not given("prompt"):
        raise ValueError(f"--prompt is required: {info.name} is text-conditional (e.g. --prompt 'a handwritten 3')")
    if info.takes_image and not given("image"):
        raise ValueError(f"--image is required: {info.name} takes input images (give a file or a folder of images)")


def _condition_words(info: PipelineInputs) -> str:
    return {"none": "unconditional", "class": "class-conditional", "text": "text-conditional"}[info.condition]


# ----- what every sample is given ------------------------------------------------------------------------------------
@dataclass
class SamplingPlan:
    """The inputs of `num_samples` samples: per-sample conditions (cycled, or `per_condition` consecutive samples
    each) and input images (cycled), and the keyword arguments every call shares."""

    pipeline: PipelineInputs
    num_samples: int
    class_labels: list[int] | None = None
    prompts: list[str] | None = None
    images: list[Any] | None = None  # PIL images
    shared_kwargs: dict[str, Any] = field(default_factory=dict)
    per_condition: int | None = None  # consecutive samples per class / prompt (one grid row each); None: cycled
    notes: list[str] = field(default_factory=list)  # what the commands print: how the request was carried out

    def condition_index(self, i: int, count: int) -> int:
        return i // self.per_condition if self.per_condition else i % count

    def labels_of(self, indices: Sequence[int]) -> list[int] | None:
        if self.class_labels is None:
            return None
        return [self.class_labels[self.condition_index(i, len(self.class_labels))] for i in indices]

    def input_image(self, i: int):
        return self.images[i % len(self.images)]

    def inputs_for(self, indices: Sequence[int]) -> dict[str, Any]:
        """The per-sample keyword arguments of one call (the caller adds `shared_kwargs` and the generators)."""
        kwargs: dict[str, Any] = {}
        if self.class_labels is not None:
            kwargs["class_labels"] = self.labels_of(indices)
        if self.prompts is not None:
            kwargs["prompt"] = [self.prompts[self.condition_index(i, len(self.prompts))] for i in indices]
        if self.images is not None:
            kwargs["image"] = [self.input_image(i) for i in indices]
        elif self.pipeline.condition == "none" and self.pipeline.takes("batch_size"):
            kwargs["batch_size"] = len(indices)
        return kwargs

    def calls(self, indices: Sequence[int]) -> list[list[int]]:
        """`indices` cut into runs whose input images share one size (a pipeline call takes one size)."""
        runs: list[list[int]] = []
        for i in indices:
            same = runs and self.images is not None and self.input_image(i).size == self.input_image(runs[-1][0]).size
            if runs and (self.images is None or same):
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs


def plan_sampling(
    pipe,
    args: argparse.Namespace,
    num_samples: int | None,
    default_num_samples: int,
    count_flag: str,
    rows_per_condition: bool = False,
) -> SamplingPlan:
    """Check the flags against `pipe` and decide each sample's inputs.

    Args:
        pipe: the loaded (and `prepare_pipeline`d) pipeline.
        args: the command's flags (`add_conditioning_args` + `--guidance_scale`, `--num_inference_steps`,
            `--timesteps`, and evaluate's `--num_classes`).
        num_samples (`int`, *optional*): the requested count; None: one output per input image for pipelines that
            take images, else `default_num_samples` (with `rows_per_condition`, rounded down to a multiple of the
            classes / prompts, at least one each).
        count_flag (`str`): the flag that gave the count (`"num_images"`, `"num_samples"`), for messages.
        rows_per_condition (`bool`): when the count is a multiple of the classes / prompts, give each one consecutive
            samples (a grid row each) instead of cycling them.
    """
    info = describe_pipeline(pipe)
    check_flags(info, args)
    plan = SamplingPlan(info, 0)
    if info.condition == "class":
        num_classes = getattr(args, "num_classes", None) or info.num_classes
        if num_classes is None and args.class_labels in (None, "all"):
            raise ValueError(
                f"--class_labels all needs --num_classes: the number of classes of {info.name} cannot be read"
            )
        plan.class_labels = parse_class_labels(args.class_labels or "all", num_classes or 0)
    elif info.condition == "text":
        plan.prompts = list(args.prompt)
    if args.image is not None:
        plan.images = load_images(args.image, "image")
    conditions = plan.class_labels or plan.prompts
    if rows_per_condition and conditions and plan.images is None:
        default_num_samples = max(1, default_num_samples // len(conditions)) * len(conditions)
    plan.num_samples = _count(plan, num_samples, default_num_samples, count_flag)
    _arrange_conditions(plan, count_flag, rows_per_condition)
    plan.shared_kwargs = _shared_kwargs(pipe, info, args)
    return plan


def _count(plan: SamplingPlan, requested: int | None, default: int, count_flag: str) -> int:
    """The number of samples; with input images, one per input unless asked otherwise (deterministic: at most that)."""
    if plan.images is None:
        return default if requested is None else requested
    available, name = len(plan.images), plan.pipeline.name
    if requested is None:
        return available
    if requested > available and not plan.pipeline.seeded:
        raise ValueError(
            f"--{count_flag} {requested} is more than the {available} input image(s) of --image: {name} is "
            f"deterministic, so a repeated input gives the same output; pass at most {available} or more inputs"
        )
    if requested < available:
        plan.notes.append(f"the first {requested} of the {available} input images (sorted by name) are used")
    elif requested > available:
        plan.notes.append(f"the {available} input image(s) are cycled over {requested} outputs, each with new noise")
    return requested


def _arrange_conditions(plan: SamplingPlan, count_flag: str, rows_per_condition: bool) -> None:
    """One grid row per class / prompt when the count is a multiple of them; otherwise cycled, and said so."""
    conditions = plan.class_labels if plan.class_labels is not None else plan.prompts
    if conditions is None:
        return
    kind = "class label" if plan.class_labels is not None else "prompt"
    count = len(conditions)
    if plan.num_samples % count == 0:
        if rows_per_condition and plan.images is None:
            plan.per_condition = plan.num_samples // count
        return
    drawn = Counter(plan.condition_index(i, count) for i in range(plan.num_samples))
    names = [str(c) if kind == "class label" else f"#{i + 1}" for i, c in enumerate(conditions)]
    used = ", ".join(f"{names[i]}×{n}" for i, n in sorted(drawn.items()))
    unused = [names[i] for i in range(count) if i not in drawn]
    plan.notes.append(
        f"--{count_flag} {plan.num_samples} is not a multiple of the {count} {kind}s, so they are cycled: {used}"
        + (f" ({', '.join(unused)} not drawn)" if unused else "")
        + f"; a multiple of {count} gives every {kind} the same number of images"
    )


def _shared_kwargs(pipe, info: PipelineInputs, args: argparse.Namespace) -> dict[str, Any]:
    if args.strength is not None and args.num_inference_steps is not None:
        from .pipelines.img2img import check_strength_steps

        try:
            check_strength_steps(args.strength, args.num_inference_steps)
        except ValueError as err:
            raise ValueError(f"--strength / --num_inference_steps: {err}") from None
    kwargs = {
        name: getattr(args, name, None)
        for name in ("guidance_scale", "num_inference_steps", "timesteps", "strength", "direction")
    }
    if args.mask_image is not None:
        (kwargs["mask_image"],) = load_images(args.mask_image, "mask_image", single=True)
    if info.takes_image and {"height", "width"} <= info.parameters and "unet" in pipe.components:
        kwargs["height"], kwargs["width"] = _sample_size(pipe)  # img2img: the size the model was trained at
    return {name: value for name, value in kwargs.items() if value is not None}


def _sample_size(pipe) -> tuple[int, int]:
    """(height, width) in pixels of what the diffusion model generates."""
    if hasattr(pipe, "default_size"):  # latent: the latent size × the VAE factor
        return pipe.default_size()
    size = pipe.unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


def load_images(path: str, flag: str, single: bool = False) -> list:
    """The PIL images of a file or of a folder's image files (sorted by name), as L or RGB."""
    from PIL import Image

    if os.path.isdir(path):
        if single:
            raise ValueError(f"--{flag} must be one image file, got the folder {path}")
        files = sorted(f for f in os.listdir(path) if os.path.splitext(f)[1].lower() in Image.registered_extensions())
        if not files:
            raise ValueError(f"--{flag}: the folder {path} holds no image files")
        files = [os.path.join(path, f) for f in files]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ValueError(f"--{flag} {path} does not exist (give an image file or a folder of images)")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
        except OSError as err:
            raise ValueError(f"--{flag}: cannot read {file} as an image ({err})") from None
        images.append(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    return images


# ----- sampling ------------------------------------------------------------------------------------------------------
Sampler = Callable[[Any, int, int, int], Iterator[tuple[Any, Any]]]


def sample_batches(pipe, num_samples: int, batch_size: int, seed: int, plan: SamplingPlan) -> Iterator[tuple]:
    """Yield `(images [B, C, H, W] in [0, 1] on CPU, class labels [B] or None)`, `num_samples` in all, the inputs of
    sample i as `plan` says; the seeding of `sample_images` (one generator per sample, from a master `seed`)."""
    import torch

    from .pipelines.utils import output_images, per_sample_seeds

    seeds = per_sample_seeds(num_samples, batch_size, seed)
    for start in range(0, num_samples, batch_size):
        for indices in plan.calls(range(start, min(start + batch_size, num_samples))):
            kwargs = {**plan.shared_kwargs, **plan.inputs_for(indices)}
            if plan.pipeline.seeded:
                kwargs["generator"] = [torch.Generator().manual_seed(seeds[i]) for i in indices]
            labels = plan.labels_of(indices)
            yield (
                output_images(pipe(output_type="pt", **kwargs)),
                (torch.tensor(labels) if labels is not None else None),
            )
