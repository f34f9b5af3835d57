"""The app's model side, without Gradio: one loaded pipeline shared by every request, and one method per page.

What a pipeline offers is read from what it is (`call_inputs.describe_pipeline`, the classes), not from a list of
names: a diffusion pipeline (pixel or latent; unconditional, class- or text-conditional) gets the generation page and
an image-to-image page (`call_inputs.with_image_input`, as `training.sample --image` does); a saved img2img
pipeline the image-to-image page; super-resolution, CycleGAN, StyleGAN and the other GANs their own.

Requests never change the shared pipeline: each runs on a shallow copy (`copy.copy`: the same modules, its own
`_interrupt` flag and config) with its own scheduler instance, so two users at the same time get their own results
(a scheduler keeps the timesteps of the call it serves). Sample i is drawn with its own generator seeded from the
request's seed exactly as `training.sample --seed` does (`pipelines.utils.per_sample_seeds`). Every call is made from
a `snippet.Call`, which is also rendered as the "as Python" code of the result.
"""

from __future__ import annotations

import copy
import inspect
import os
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
import torch

from ..call_inputs import _sample_size, describe_pipeline, with_image_input
from ..options import SCHEDULER_NAMES
from ..pipelines.utils import per_sample_seeds
from .limits import Limits
from .snippet import Arg, Call, literal, render

PAGES = ("generate", "img2img", "super_resolution", "cyclegan", "stylegan", "gan")
DEFAULT_SCHEDULER = "default"
# diffusers' schedulers the pixel and latent pipelines are tested with (tests/pipelines/test_scheduler_swap.py);
# a pipeline offers those its own scheduler lists as compatible.
DIFFUSERS_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
)
MAX_SEED = 2**63 - 1


class Cancelled(Exception):
    """A request stopped by its user (the page's Cancel button)."""


@dataclass
class Result:
    images: list[PIL.Image.Image]
    code: str
    seed: int | None = None  # None for deterministic pipelines (super-resolution, CycleGAN)
    inputs: dict[str, PIL.Image.Image] = field(default_factory=dict)  # file name → the exact input the call got
    captions: list[str] | None = None


def resolve_seed(seed, randomize: bool = False) -> int:
    """The seed a request uses: a fresh one when asked to randomize, else `seed` checked."""
    if randomize:
        return secrets.randbelow(2**31)
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


def _generators(num_images: int, seed: int) -> tuple[Arg, list[str]]:
    seeds = per_sample_seeds(num_images, num_images, seed)
    setup = [f"seeds = {seeds}  # one per image, drawn from seed {seed} as `python -m training.sample --seed {seed}`"]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return Arg(generators, "[torch.Generator().manual_seed(s) for s in seeds]"), setup


def _class_label(value) -> int | str:
    """A class from the page: an id (int, or digits as text) or a name from `id2label`."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if not text:
            raise ValueError("class_labels must be a class id or a name from id2label, got an empty string")
        return text
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"class_labels must be a class id or a name from id2label, got {value!r}")


class AppModel:
    """A pipeline loaded once (folder or Hub repo id, through `load_pipeline`) and the pages it offers."""

    def __init__(self, source: str, limits: Limits | None = None, pipe=None, **load_kwargs):
        from ..hub.loader import load_pipeline

        self.source = source
        self.limits = limits or Limits()
        self.pipe = pipe if pipe is not None else load_pipeline(source, **load_kwargs)
        self.info = describe_pipeline(self.pipe)
        self.pages = self._pages()
        self._img2img_pipe = with_image_input(self.pipe) if "img2img" in self.pages else None
        self._lock = threading.Lock()  # guards building a request's view of the pipeline, and the counts
        self.counts = Counter()  # requests "finished" / "cancelled" (stopped mid-loop by the Cancel button)

    # ----- what the pipeline offers ---------------------------------------------------------------------------------
    def _pages(self) -> list[str]:
        from ..pipelines.pipeline_cyclegan import CycleGANPipeline
        from ..pipelines.pipeline_gan import GANPipeline
        from ..pipelines.pipeline_stylegan import StyleGANPipeline
        from ..pipelines.pipeline_super_resolution import SuperResolutionPipeline

        pipe = self.pipe
        if isinstance(pipe, StyleGANPipeline):
            return ["stylegan"]
        if isinstance(pipe, GANPipeline):
            return ["gan"]
        if isinstance(pipe, SuperResolutionPipeline):
            return ["super_resolution"]
        if isinstance(pipe, CycleGANPipeline):
            return ["cyclegan"]
        if self.info.takes_image:
            return ["img2img"]
        if "scheduler" in pipe.components:
            return ["generate", "img2img"] if "image" in _parameters(with_image_input(pipe)) else ["generate"]
        raise ValueError(f"the app has no page for {type(pipe).__name__}: it is none of the pipeline types we ship")

    @property
    def condition(self) -> str:
        return self.info.condition

    @property
    def class_choices(self) -> list[tuple[str, str]]:
        """(shown name, value) per class: `"3: digit 3"` → `"3"`."""
        if self.condition != "class" or not self.info.num_classes:
            return []
        id2label = self.pipe.config.get("id2label") or {}
        return [
            (f"{i}: {id2label[str(i)]}" if str(i) in id2label else str(i), str(i))
            for i in range(self.info.num_classes)
        ]

    @property
    def is_distilled(self) -> bool:
        """A consistency-distilled student (`training/train_distill.py`): its teacher's pipeline class with diffusers'
        `LCMScheduler`, which samples in a few steps on the grid it was distilled on."""
        return type(self.pipe.components.get("scheduler")).__name__ == "LCMScheduler"

    @property
    def default_steps(self) -> int:
        """The steps the page starts with: 4 for a distilled student, 25 otherwise (a CPU-friendly DDPM count)."""
        return 4 if self.is_distilled else 25

    @property
    def max_model_steps(self) -> int | None:
        """The most steps the model's scheduler can take: a student's distillation grid, else its T."""
        config = self.pipe.scheduler.config if "scheduler" in self.pipe.components else {}
        if self.is_distilled:
            return config.get("original_inference_steps")
        return config.get("num_train_timesteps")

    @property
    def scheduler_names(self) -> list[str]:
        scheduler = self.pipe.components.get("scheduler")
        if scheduler is None:
            return []
        if self.is_distilled:  # the student was trained for its LCMScheduler's grid only
            return [DEFAULT_SCHEDULER]
        compatible = {cls.__name__ for cls in getattr(scheduler, "compatibles", [])}
        return [DEFAULT_SCHEDULER, *SCHEDULER_NAMES, *(n for n in DIFFUSERS_SCHEDULERS if n in compatible)]

    def default(self, parameter: str, fallback=None):
        """The default of a `__call__` argument (e.g. `guidance_scale`), or `fallback` where it has none."""
        value = inspect.signature(self.pipe.__call__).parameters.get(parameter)
        if value is None or value.default in (inspect.Parameter.empty, None):
            return fallback
        return value.default

    @property
    def takes_size(self) -> bool:
        """Latent pipelines take `height`/`width` (multiples of `size_multiple`); pixel ones draw at the UNet's."""
        return "generate" in self.pages and {"height", "width"} <= self.info.parameters

    @property
    def default_size(self) -> tuple[int, int]:
        return _sample_size(self.pipe)

    @property
    def size_multiple(self) -> int:
        from ..pipelines.pipeline_latent_diffusion import unet_downsampling_of

        return self.pipe.vae_scale_factor * unet_downsampling_of(self.pipe.unet)

    def source_text(self) -> str:
        """How the snippet names the pipeline: a local folder by its absolute path, a Hub repo by its id."""
        return os.path.abspath(self.source) if os.path.isdir(self.source) else self.source

    def _load_lines(self, page: str) -> tuple[list[str], list[str]]:
        name = type(self.pipe).__name__
        module = "custom_pipelines" if type(self.pipe).__module__.startswith("custom_pipelines") else "diffusers"
        imports = ["import torch", f"from {module} import {name}"]
        load = f"{name}.from_pretrained({self.source_text()!r})"
        if page == "img2img" and self._img2img_pipe is not self.pipe:
            imports.append("from custom_pipelines.call_inputs import with_image_input")
            load = f"with_image_input({load})  # the same components as {type(self._img2img_pipe).__name__}"
        return [f"pipe = {load}"], imports

    # ----- running a request ----------------------------------------------------------------------------------------
    def _request_pipe(self, base, scheduler: str) -> tuple[Any, list[str], list[str]]:
        """A view of `base` with its own scheduler instance: (pipeline, snippet lines, snippet imports)."""
        with self._lock:
            view = copy.copy(base)
        current = base.components.get("scheduler")
        if current is None:
            if scheduler not in (None, DEFAULT_SCHEDULER):
                raise ValueError(f"scheduler does not apply to {type(base).__name__}: it has no scheduler")
            return view, [], []
        if scheduler in (None, DEFAULT_SCHEDULER):
            view.scheduler = type(current).from_config(current.config)
            return view, [], []
        if scheduler not in self.scheduler_names:
            raise ValueError(f"scheduler must be one of {self.scheduler_names}, got {scheduler!r}")
        if scheduler in SCHEDULER_NAMES:
            from ..schedulers import scheduler_from_name

            view.scheduler = scheduler_from_name(scheduler, current.config)
            line = f"pipe.scheduler = scheduler_from_name({scheduler!r}, pipe.scheduler.config)"
            return view, [line], ["from custom_pipelines.schedulers import scheduler_from_name"]
        import diffusers

        view.scheduler = getattr(diffusers, scheduler).from_config(current.config)
        line = f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config)"
        return view, [line], [f"from diffusers import {scheduler}"]

    def _run(self, page: str, view, call: Call, cancel: threading.Event | None, extra_lines=(), imports=()) -> tuple:
        """Make `call` on `view`; returns (images, code). `cancel` stops a diffusion loop at the next step."""
        kwargs = call.values()
        parameters = _parameters(view)
        if cancel is not None and ("callback_on_step_end" in parameters):

            def stop_when_cancelled(pipe, step, timestep, tensors):
                if cancel.is_set():
                    pipe._interrupt = True
                return tensors

            kwargs["callback_on_step_end"] = stop_when_cancelled
        output = getattr(view, call.method)(**kwargs)
        if cancel is not None and cancel.is_set():
            with self._lock:
                self.counts["cancelled"] += 1
            raise Cancelled("cancelled: the request was stopped before it finished")
        with self._lock:
            self.counts["finished"] += 1
        images = getattr(output, call.result)
        load_lines, load_imports = self._load_lines(page)
        code = render(load_lines + list(extra_lines), load_imports + list(imports), call, isinstance(images, list))
        return (images if isinstance(images, list) else [images]), code

    def _conditioning(self, call: Call, n: int, class_label, guidance_scale, prompt, negative_prompt, per_image: bool):
        """class labels / prompts and guidance for a conditional model; refused for an unconditional one."""
        if self.condition == "class":
            label = _class_label(class_label if class_label is not None else 0)
            call.kwargs["class_labels"] = Arg([label] * n, f"[{label!r}] * {n}")
        elif self.condition == "text":
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt must be a non-empty string: {self.info.name} is text-conditional")
            if per_image:
                call.kwargs["prompt"] = Arg([prompt] * n, f"[{prompt!r}] * {n}")
                if negative_prompt:
                    call.kwargs["negative_prompt"] = Arg([negative_prompt] * n, f"[{negative_prompt!r}] * {n}")
            else:
                call.kwargs["prompt"] = literal(prompt)
                if negative_prompt:
                    call.kwargs["negative_prompt"] = literal(negative_prompt)
                call.kwargs["num_images_per_prompt"] = literal(n)
        if self.condition in ("class", "text") and guidance_scale is not None:
            call.kwargs["guidance_scale"] = literal(float(guidance_scale))

    def generate(
        self,
        seed: int,
        num_images: int = 1,
        num_inference_steps: int = 25,
        scheduler: str = DEFAULT_SCHEDULER,
        eta: float = 0.0,
        class_label=None,
        guidance_scale: float | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Diffusion: `num_images` images (class-conditional: of one class; text: of one prompt)."""
        n = self.limits.check_num_images(num_images)
        steps = self.limits.check_steps(num_inference_steps)
        view, lines, imports = self._request_pipe(self.pipe, scheduler)
        call = Call({})
        if self.condition == "none":
            call.kwargs["batch_size"] = literal(n)
        self._conditioning(call, n, class_label, guidance_scale, prompt, negative_prompt, per_image=False)
        call.kwargs["num_inference_steps"] = literal(steps)
        if eta:
            call.kwargs["eta"] = literal(float(eta))
        if self.takes_size and (height, width) != (None, None):
            h, w = int(height or self.default_size[0]), int(width or self.default_size[1])
            self.limits.check_pixels((w, h), "height × width")
            if (h, w) != tuple(self.default_size):
                call.kwargs["height"], call.kwargs["width"] = literal(h), literal(w)
        call.kwargs["generator"], call.setup = _generators(n, seed)
        images, code = self._run("generate", view, call, cancel, lines, imports)
        return Result(images, code, seed)

    def img2img(
        self,
        seed: int,
        image: PIL.Image.Image,
        mask_image: PIL.Image.Image | None = None,
        strength: float = 0.8,
        num_images: int = 1,
        num_inference_steps: int = 25,
        scheduler: str = DEFAULT_SCHEDULER,
        class_label=None,
        guidance_scale: float | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """SDEdit from `image` (resized to the model's size), or inpainting of the white part of `mask_image`."""
        if not isinstance(image, PIL.Image.Image):
            raise ValueError("image is required: upload an image or pick an example")
        self.limits.check_pixels(image.size, "image")
        n = self.limits.check_num_images(num_images)
        steps = self.limits.check_steps(num_inference_steps)
        view, lines, imports = self._request_pipe(self._img2img_pipe, scheduler)
        height, width = _sample_size(view)
        call = Call({}, imports=["from PIL import Image"], setup=['image = Image.open("input.png")'])
        inputs = {"input.png": image}
        call.kwargs["image"] = Arg([image] * n, f"[image] * {n}")
        if mask_image is not None:
            call.setup.append('mask_image = Image.open("mask.png")')
            call.kwargs["mask_image"] = Arg([mask_image] * n, f"[mask_image] * {n}")
            inputs["mask.png"] = mask_image
        call.kwargs["strength"] = literal(float(strength))
        self._conditioning(call, n, class_label, guidance_scale, prompt, negative_prompt, per_image=True)
        call.kwargs["num_inference_steps"] = literal(steps)
        call.kwargs["height"], call.kwargs["width"] = literal(height), literal(width)
        generator, seed_lines = _generators(n, seed)
        call.kwargs["generator"] = generator
        call.setup += seed_lines
        images, code = self._run("img2img", view, call, cancel, lines, imports)
        return Result(images, code, seed, inputs)

    def super_resolution(self, image: PIL.Image.Image, tile_size: int | None = None) -> Result:
        """The upscaled image beside bicubic at the same size; `tile_size` bounds memory for large inputs."""
        if not isinstance(image, PIL.Image.Image):
            raise ValueError("image is required: upload an image or pick an example")
        self.limits.check_pixels(image.size, "image")
        view, _, _ = self._request_pipe(self.pipe, None)
        call = Call({"image": Arg(image, "image")}, imports=["from PIL import Image"])
        call.setup = ['image = Image.open("input.png")']
        if tile_size:
            call.kwargs["tile_size"] = literal(int(tile_size))
        (upscaled,), code = self._run("super_resolution", view, call, None)
        bicubic = image.resize(upscaled.size, PIL.Image.BICUBIC)
        return Result([bicubic, upscaled], code, None, {"input.png": image}, ["bicubic", type(self.pipe).__name__])

    def cyclegan(self, image: PIL.Image.Image, direction: str = "a_to_b") -> Result:
        if not isinstance(image, PIL.Image.Image):
            raise ValueError("image is required: upload an image or pick an example")
        self.limits.check_pixels(image.size, "image")
        view, _, _ = self._request_pipe(self.pipe, None)
        call = Call({"image": Arg(image, "image"), "direction": literal(direction)}, imports=["from PIL import Image"])
        call.setup = ['image = Image.open("input.png")']
        images, code = self._run("cyclegan", view, call, None)
        return Result(images, code, None, {"input.png": image})

    def sample_gan(self, seed: int, num_images: int = 1, truncation_psi: float | None = None) -> Result:
        """GAN / StyleGAN samples (StyleGAN: with the truncation ψ)."""
        n = self.limits.check_num_images(num_images)
        view, _, _ = self._request_pipe(self.pipe, None)
        call = Call({"batch_size": literal(n)})
        if truncation_psi is not None:
            call.kwargs["truncation_psi"] = literal(float(truncation_psi))
        call.kwargs["generator"], call.setup = _generators(n, seed)
        images, code = self._run(self.pages[0], view, call, None)
        return Result(images, code, seed)

    def style_mix(self, seeds_a, seeds_b, crossover="coarse", truncation_psi: float = 1.0) -> Result:
        """StyleGAN's style-mixing grid: rows take A's styles, columns copy in B's at `crossover`."""
        seeds_a, seeds_b = _seed_list("seeds_a", seeds_a), _seed_list("seeds_b", seeds_b)
        if len(seeds_a) * len(seeds_b) > self.limits.max_images * self.limits.max_images:
            raise ValueError(
                f"seeds_a × seeds_b must be at most {self.limits.max_images}² mixed images (the app's --max_images "
                f"per side), got {len(seeds_a)}×{len(seeds_b)}"
            )
        crossover = int(crossover) if isinstance(crossover, str) and crossover.isdigit() else crossover
        view, _, _ = self._request_pipe(self.pipe, None)
        call = Call(
            {
                "seeds_a": literal(seeds_a),
                "seeds_b": literal(seeds_b),
                "crossover": literal(crossover),
                "truncation_psi": literal(float(truncation_psi)),
            },
            method="style_mix",
            result="grid",
        )
        images, code = self._run("stylegan", view, call, None)
        return Result(images, code, seeds_a[0])

    def interpolate(self, seed_a: int, seed_b: int, steps: int = 8, truncation_psi: float = 1.0) -> Result:
        """A strip of `steps` images along the line between the W of two seeds."""
        steps = int(steps)
        if not 2 <= steps <= self.limits.max_images * 2:
            raise ValueError(f"steps must be in [2, {self.limits.max_images * 2}] (twice --max_images), got {steps}")
        seed_a, seed_b = resolve_seed(seed_a), resolve_seed(seed_b)
        view, _, _ = self._request_pipe(self.pipe, None)
        z_dim = self.pipe.stylegan.config.z_dim
        setup = [
            "# z of a seed: what pipe(generator=torch.Generator().manual_seed(seed)) draws",
            f"z0 = torch.randn(1, {z_dim}, generator=torch.Generator().manual_seed({seed_a}))",
            f"z1 = torch.randn(1, {z_dim}, generator=torch.Generator().manual_seed({seed_b}))",
        ]
        z0 = torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed_a))
        z1 = torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed_b))
        call = Call(
            {
                "z0": Arg(z0, "z0"),
                "z1": Arg(z1, "z1"),
                "steps": literal(steps),
                "truncation_psi": literal(float(truncation_psi)),
            },
            method="interpolate",
            setup=setup,
        )
        images, code = self._run("stylegan", view, call, None)
        return Result(images, code, seed_a)


def _parameters(pipe) -> set[str]:
    info = describe_pipeline(pipe)
    return set(info.parameters) | ({"callback_on_step_end"} if info.takes_any else set())


def _seed_list(name: str, seeds) -> list[int]:
    if isinstance(seeds, str):
        try:
            seeds = [int(s) for s in seeds.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{name} must be integers separated by commas, got {seeds!r}") from None
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ValueError(f"{name} must be a non-empty list of integer seeds, got {seeds!r}")
    return [resolve_seed(s) for s in seeds]
