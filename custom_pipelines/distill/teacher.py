"""A saved pipeline of ours as a frozen teacher, and the student that starts from its weights.

Teachers: `UnconditionalDiffusionPipeline` (pixel), `ClassConditionalDiffusionPipeline` (pixel, class embedding) and
`LatentDiffusionPipeline` (none / class / text). The student is the same pipeline class with the same components, its
UNet a copy of the teacher's (guided families: plus a zero-initialised w-embedding) and its scheduler diffusers'
`LCMScheduler` on the teacher's noise schedule, so it loads and samples with the standard calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

Family = Literal["unconditional", "class", "latent-none", "latent-class", "latent-text"]
TEACHER_CLASSES = ("UnconditionalDiffusionPipeline", "ClassConditionalDiffusionPipeline", "LatentDiffusionPipeline")


@dataclass
class Teacher:
    pipeline: object
    family: Family

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def guided(self) -> bool:
        """Class and text teachers are distilled with classifier-free guidance folded in (w-embedding)."""
        return self.family in ("class", "latent-class", "latent-text")

    @property
    def latent(self) -> bool:
        return self.family.startswith("latent")

    @property
    def prediction_type(self) -> str:
        return self.pipeline.scheduler.config.prediction_type


def pipeline_class_name(path: str) -> str:
    """The `_class_name` of a saved pipeline's model_index.json (a `[module, class]` pair names the class second)."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--teacher {path!r}: not a saved pipeline (no readable model_index.json): {err}") from None
    name = index.get("_class_name")
    return name[-1] if isinstance(name, (list, tuple)) else str(name)


def load_teacher(path: str) -> Teacher:
    """Load a diffusion pipeline of ours as the teacher; a ValueError for anything else (a GAN, a stock pipeline)."""
    from custom_pipelines.hub.loader import load_pipeline

    name = pipeline_class_name(path)
    if name not in TEACHER_CLASSES:
        raise ValueError(
            f"--teacher {path!r} is a {name}: distillation needs a diffusion pipeline of ours, "
            f"one of {TEACHER_CLASSES}"
        )
    pipe = load_pipeline(path)
    if getattr(pipe.scheduler, "alphas_cumprod", None) is None:
        raise ValueError(f"--teacher {path!r}: its scheduler {type(pipe.scheduler).__name__} has no alphas_cumprod")
    if name == "UnconditionalDiffusionPipeline":
        family = "unconditional"
    elif name == "ClassConditionalDiffusionPipeline":
        family = "class"
    else:
        family = f"latent-{pipe.conditioning_type}"
    if pipe.unet.config.get("out_channels", 0) not in (0, pipe.unet.config.get("in_channels")):
        if family in ("unconditional", "class"):  # a learned-variance DDPM: the ODE needs the mean only
            raise ValueError(
                f"--teacher {path!r} predicts a learned variance (2C outputs); distil a fixed-variance one"
            )
    pipe.set_progress_bar_config(disable=True)
    return Teacher(pipe, family)


def build_student_unet(teacher: Teacher, w_embedding_dim: int = 256) -> torch.nn.Module:
    """A trainable copy of the teacher's UNet; guided families get a w-embedding that starts at zero."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    from custom_pipelines.models.unet_class_concat import ClassConcatUNet2DModel

    from .guidance_embedding import GuidanceEmbeddedUNet2DModel

    unet = teacher.unet
    if not teacher.guided:
        return copy.deepcopy(unet).float().train()
    if isinstance(unet, UNet2DConditionModel):
        student = UNet2DConditionModel.from_config(unet.config, time_cond_proj_dim=w_embedding_dim)
        missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
        assert not unexpected and missing == ["time_embedding.cond_proj.weight"], (missing, unexpected)
        torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)  # w starts without effect
        return student.float().train()
    if isinstance(unet, ClassConcatUNet2DModel):
        raise ValueError(
            "a ClassConcatUNet2DModel teacher (--conditioning concat) has no timestep embedding to add w to; "
            "distil a class-embedding teacher (train_cfg.py --conditioning embedding)"
        )
    if isinstance(unet, UNet2DModel):
        return GuidanceEmbeddedUNet2DModel.from_class_conditional(unet, w_embedding_dim).float().train()
    raise ValueError(f"cannot distil a {type(unet).__name__} teacher UNet")


def build_student_scheduler(teacher: Teacher, num_ddim_timesteps: int, timestep_scaling: float = 10.0):
    """diffusers' `LCMScheduler` on the teacher's ᾱ_t: `original_inference_steps` = N (the skipping grid's size, the
    most steps the student samples with), the teacher's prediction type, clipping as the teacher's (pixel models)."""
    from diffusers import LCMScheduler

    source = teacher.pipeline.scheduler
    config = dict(source.config)
    kwargs = {
        "num_train_timesteps": config["num_train_timesteps"],
        "prediction_type": teacher.prediction_type,
        "original_inference_steps": num_ddim_timesteps,
        "timestep_scaling": timestep_scaling,
        "clip_sample": bool(config.get("clip_sample", False)) and not teacher.latent,
        "clip_sample_range": config.get("clip_sample_range", 1.0),
        "set_alpha_to_one": True,
    }
    for key in ("beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr"):
        if key in config:
            kwargs[key] = config[key]
    try:
        scheduler = LCMScheduler(**kwargs)
        same = torch.allclose(scheduler.alphas_cumprod.double(), source.alphas_cumprod.double().cpu(), atol=1e-6)
    except NotImplementedError:  # a beta schedule only our scheduler knows by name
        same = False
    if not same:  # carry the teacher's betas themselves
        kwargs.pop("beta_schedule", None)
        scheduler = LCMScheduler(**kwargs, trained_betas=source.betas.double().cpu().tolist())
    return scheduler


def build_student_pipeline(teacher: Teacher, unet: torch.nn.Module, scheduler):
    """The student: the teacher's pipeline class and components, with the student UNet and `LCMScheduler`."""
    components = {**teacher.pipeline.components, "unet": unet, "scheduler": scheduler}  # (+ id2label, a config)
    return type(teacher.pipeline)(**components)
