"""A LoRA of our text latent model loads with diffusers' own `StableDiffusionPipeline.load_lora_weights` on the same
components and gives the same images as our `load_lora_weights`."""

from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from custom_pipelines.lora import adapters
from tests.lora.conftest import add_random_adapter, sample, tiny_pipeline, unet_output


def test_stable_diffusion_pipeline_loads_our_lora(tmp_path):
    trained = tiny_pipeline("text")
    base_unet = copy.deepcopy(trained.unet)
    add_random_adapter(trained.unet, "digits", rank=4, alpha=2.0)  # α ≠ r: the metadata must carry the scale
    trained.save_lora_weights(tmp_path)

    ours = tiny_pipeline("text")
    ours.load_lora_weights(tmp_path, adapter_name="digits")

    sd = StableDiffusionPipeline(
        vae=ours.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer, unet=copy.deepcopy(base_unet),
        scheduler=ours.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    sd.load_lora_weights(str(tmp_path), adapter_name="digits")
    assert sd.get_list_adapters() == {"unet": ["digits"]}
    # the denoiser diffusers built computes what ours computes ...
    torch.testing.assert_close(unet_output(sd.unet, "text"), unet_output(ours.unet, "text"), atol=0, rtol=0)
    assert not torch.allclose(unet_output(sd.unet, "text"), unet_output(base_unet, "text"))
    # ... so the same sampling loop gives the same images with either's LoRA-loaded UNet
    expected = sample(ours, "text")
    ours.unet = sd.unet
    np.testing.assert_array_equal(sample(ours, "text"), expected)
    # and diffusers' fuse/unload on it agree with ours
    sd.fuse_lora(lora_scale=0.5)
    sd.unload_lora_weights()
    reference = tiny_pipeline("text")
    reference.load_lora_weights(tmp_path)
    reference.fuse_lora(lora_scale=0.5)
    reference.unload_lora_weights()
    assert not adapters.lora_layers(reference.unet)
    torch.testing.assert_close(unet_output(sd.unet, "text"), unet_output(reference.unet, "text"), atol=1e-6, rtol=0)
