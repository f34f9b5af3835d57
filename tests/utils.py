"""Builders shared by tests: every architecture comes from a hub_configs/ variant."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from custom_pipelines.hub.configs import load_component_config


def tiny_unet(seed: int = 0, variant: str = "ddpm-tiny-8", **overrides) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel.from_config({**load_component_config(variant, "unet"), **overrides}).eval()


def scheduler_config(variant: str = "ddpm-tiny-8") -> dict:
    return load_component_config(variant, "scheduler", "scheduler_config.json")
