"""One tiny, seeded pipeline of every type we ship, and the call that samples it (JSON-able, so a fresh process that
imports nothing of ours can make the same call)."""

from __future__ import annotations

import numpy as np
import torch

from custom_pipelines import (
    ClassConcatUNet2DModel,
    ClassConditionalDiffusionPipeline,
    DCGANGenerator,
    DDPMAncestralScheduler,
    GANPipeline,
    StyleGANGenerator,
    StyleGANPipeline,
    UnconditionalDiffusionPipeline,
)
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.class_conditioning import class_conditional_unet_config
from tests.utils import scheduler_config, tiny_unet

KINDS = ("ddpm", "cfg", "stylegan", "gan")
PIPELINE_CLASSES = {
    "ddpm": UnconditionalDiffusionPipeline,
    "cfg": ClassConditionalDiffusionPipeline,
    "stylegan": StyleGANPipeline,
    "gan": GANPipeline,
}
# The component of ours that each type's shims must cover, and its class (loaded alone in the component tests).
OUR_COMPONENT = {
    "ddpm": ("scheduler", DDPMAncestralScheduler),
    "cfg": ("unet", ClassConcatUNet2DModel),
    "stylegan": ("stylegan", StyleGANGenerator),
    "gan": ("gan_generator", DCGANGenerator),
}
SAMPLE_KWARGS = {
    "ddpm": {"batch_size": 2, "num_inference_steps": 2},
    "cfg": {"class_labels": [1, 3], "num_inference_steps": 2, "guidance_scale": 2.0},
    "stylegan": {"batch_size": 2, "truncation_psi": 0.7},
    "gan": {"batch_size": 2},
}
# Sizes of the GAN variants shrunk to test size (the hub_configs variants stay the source of every other key).
TINY_GAN_OVERRIDES = {
    "stylegan": {"resolution": 8, "z_dim": 8, "w_dim": 8, "n_mapping_layers": 2, "channel_base": 64, "channel_max": 8},
    "gan": {"resolution": 8, "z_dim": 8, "base_channels": 4},
}


def build(kind: str, seed: int = 0):
    """A tiny pipeline of `kind` with weights drawn from `seed` (different seeds → different weights)."""
    torch.manual_seed(seed)
    if kind == "ddpm":
        scheduler = DDPMAncestralScheduler.from_config(scheduler_config())
        pipe = UnconditionalDiffusionPipeline(unet=tiny_unet(seed), scheduler=scheduler)
    elif kind == "cfg":  # the concat UNet: a model class of ours, so the unet gets a shim too
        cls, config = class_conditional_unet_config(load_component_config("cfg-tiny-8", "unet"), "concat", 10)
        scheduler = DDPMAncestralScheduler.from_config(scheduler_config("cfg-tiny-8"))
        pipe = ClassConditionalDiffusionPipeline(
            unet=cls.from_config(config).eval(), scheduler=scheduler, id2label={i: f"digit {i}" for i in range(10)}
        )
    elif kind == "stylegan":
        config = {**load_component_config("stylegan-digits-32", "stylegan"), **TINY_GAN_OVERRIDES["stylegan"]}
        stylegan = StyleGANGenerator.from_config(config).eval()
        with torch.no_grad():  # fresh models have w_avg = 0: give it a value the round trip must keep
            stylegan.mapping.w_avg.normal_()
        pipe = StyleGANPipeline(stylegan=stylegan)
    elif kind == "gan":
        config = {**load_component_config("dcgan-digits-16", "gan_generator"), **TINY_GAN_OVERRIDES["gan"]}
        pipe = GANPipeline(gan_generator=DCGANGenerator.from_config(config).eval())
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, kind: str, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(**SAMPLE_KWARGS[kind], generator=generator, output_type="np").images


def state_dicts(pipe) -> dict[str, torch.Tensor]:
    """Every tensor of every model component, keyed `component.name`."""
    return {
        f"{name}.{key}": value
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module)
        for key, value in component.state_dict().items()
    }
