"""LatentImg2ImgPipeline on a tiny AutoencoderKL + UNet (sizes from hub_configs/ldm-digits-16, narrowed)."""

import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DModel

from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.autoencoder import decode_latents, encode_latents
from custom_pipelines.pipelines.pipeline_img2img import LatentImg2ImgPipeline
from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler

NARROW = {"block_out_channels": [8, 16], "norm_num_groups": 4}
IMAGE = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
MASK = torch.zeros(1, 1, 16, 16)
MASK[..., :8] = 1


def components(scheduler_cls=DDPMAncestralScheduler):
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config({**load_component_config("ldm-digits-16", "vae"), **NARROW}).eval()
    unet = UNet2DModel.from_config({**load_component_config("ldm-digits-16", "unet"), **NARROW}).eval()
    config = load_component_config("ldm-digits-16", "scheduler", "scheduler_config.json")
    return {"vae": vae, "unet": unet, "scheduler": scheduler_cls.from_config(config)}


def make(cls=LatentImg2ImgPipeline, **kwargs):
    pipe = cls(**components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return make()


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("image", IMAGE)
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("output_type", "pt")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_strength_one_is_text_to_image_from_the_same_noise(pipe):
    plain = LatentDiffusionPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    expected = plain(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(run(pipe, strength=1.0), expected, rtol=0, atol=0)


def test_strength_zero_is_the_vae_reconstruction(pipe):
    with torch.no_grad():
        reconstruction = decode_latents(pipe.vae, encode_latents(pipe.vae, IMAGE * 2 - 1, sample=False))
    torch.testing.assert_close(run(pipe, strength=0.0), (reconstruction / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "scheduler_cls", [DDPMAncestralScheduler, DDIMEtaScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_schedulers_and_inpainting_keep_the_known_pixels(scheduler_cls):
    pipe = make(scheduler_cls=scheduler_cls)
    assert run(pipe, strength=0.5).shape == (1, 1, 16, 16)
    out = run(pipe, strength=0.75, mask_image=MASK)
    torch.testing.assert_close(out[..., 8:], IMAGE[..., 8:], rtol=0, atol=1e-6)
    latent = run(pipe, strength=0.75, mask_image=MASK, output_type="latent")
    assert latent.shape == (1, 4, 8, 8)


def test_bad_arguments(pipe):
    for kwargs, name in [
        ({"strength": 2.0}, "strength"),
        ({"mask_image": torch.zeros(1, 1, 8, 8)}, "mask_image"),
        ({"image": torch.rand(1, 3, 16, 16)}, "image"),
        ({"prompt": "a digit"}, "prompt"),
    ]:
        with pytest.raises(ValueError, match=name):
            run(pipe, **kwargs)


def test_cross_class_loading(pipe, tmp_path):
    LatentDiffusionPipeline(**pipe.components).save_pretrained(tmp_path)
    loaded = LatentImg2ImgPipeline.from_pretrained(tmp_path)
    assert type(loaded) is LatentImg2ImgPipeline
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, strength=0.5), run(pipe, strength=0.5), rtol=0, atol=1e-5)
