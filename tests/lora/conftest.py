"""Tiny pipelines of every denoiser type LoRA supports, and adapters with non-zero weights on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from custom_pipelines.lora import adapters, make_lora_config
from tests.hub.tiny_pipelines import build
from tests.hub.tiny_pipelines import sample as sample_tiny

SAMPLE_TEXT = {"prompt": ["a handwritten digit one", "a handwritten digit two"], "num_inference_steps": 2}


def tiny_pipeline(kind: str, seed: int = 0):
    """`ddpm`: UNet2DModel; `cfg`: ClassConcatUNet2DModel; `text`: a text LatentDiffusionPipeline
    (UNet2DConditionModel)."""
    if kind == "text":
        from tests.pipelines.test_latent_diffusion import make

        torch.manual_seed(seed)
        return make("text")
    return build(kind, seed)


def sample(pipe, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "text":
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(seed)
        return pipe(**SAMPLE_TEXT, guidance_scale=2.0, generator=generator, output_type="np").images
    return sample_tiny(pipe, kind, seed)


def add_random_adapter(model: torch.nn.Module, name: str, rank: int = 4, seed: int = 0, alpha: float | None = None):
    """An adapter as after training: B ≠ 0 (a fresh one has B = 0 and changes nothing)."""
    torch.manual_seed(seed)
    adapters.add_adapter(model, make_lora_config(model, rank, alpha), name)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if f"lora_B.{name}." in param_name:
                param.normal_(0.0, 0.2)
    return model


def unet_output(unet, kind: str, seed: int = 0) -> torch.Tensor:
    """One denoiser call on fixed inputs (what every sampler step is made of)."""
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    x = torch.randn(2, config.in_channels, size, size, generator=g)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        if kind == "text":
            states = torch.randn(2, 8, config.cross_attention_dim, generator=g)
            return unet(x, t, encoder_hidden_states=states).sample
        if kind == "cfg":
            return unet(x, t, class_labels=torch.tensor([1, 10])).sample
        return unet(x, t).sample


@pytest.fixture(params=["ddpm", "cfg", "text"])
def kind(request):
    return request.param


# the local test hub (tests/hub): a server on 127.0.0.1 and this process's client pointed at it
from tests.hub.conftest import private_modules_cache, test_hub, use_hub  # noqa: E402, F401
