"""Builders shared by tests: every architecture comes from a hub_configs/ variant."""

from __future__ import annotations

import os

import torch
from diffusers import UNet2DModel

from custom_pipelines.hub.configs import load_component_config


def tiny_unet(seed: int = 0, variant: str = "ddpm-tiny-8", **overrides) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel.from_config({**load_component_config(variant, "unet"), **overrides}).eval()


def scheduler_config(variant: str = "ddpm-tiny-8") -> dict:
    return load_component_config(variant, "scheduler", "scheduler_config.json")


def run_model_card_snippet(folder, tmp_path, **overrides):
    """Run the usage snippet of `folder`'s model card as a user would (in `tmp_path`), with `overrides` replacing
    call arguments to keep it fast (e.g. num_inference_steps=2); returns the image it saved."""
    import re
    from pathlib import Path

    from PIL import Image

    card = (Path(folder) / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    for name, value in overrides.items():
        code, n = re.subn(rf"{name}=[^,)]+", f"{name}={value!r}", code)
        assert n == 1, f"the snippet has no {name}= to override:\n{code}"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "model card snippet", "exec"), {})
    finally:
        os.chdir(cwd)
    return Image.open(Path(tmp_path) / "sample.png")
