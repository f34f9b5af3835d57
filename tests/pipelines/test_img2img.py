"""DiffusionImg2ImgPipeline: SDEdit strength, inpainting, schedulers, checks, save/load and cross-class loading."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.pipelines.pipeline_img2img import DiffusionImg2ImgPipeline
from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from custom_pipelines.schedulers.scheduling_dpmsolver_2m import DPMSolver2MScheduler
from tests.utils import scheduler_config, tiny_unet

SCHEDULERS = [
    DDPMAncestralScheduler, DDIMEtaScheduler, DPMSolver2MScheduler,
    DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
]  # fmt: skip
IMAGE = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
MASK = torch.zeros(1, 1, 8, 8)
MASK[..., :4] = 1  # repaint the left half


def make(cls=DiffusionImg2ImgPipeline, scheduler_cls=DDPMAncestralScheduler):
    pipe = cls(unet=tiny_unet(), scheduler=scheduler_cls.from_config(scheduler_config()))
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


def test_strength_one_is_plain_generation(pipe):
    plain = make(UnconditionalDiffusionPipeline)
    expected = plain(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(run(pipe, strength=1.0), expected.images, rtol=0, atol=0)


def test_strength_zero_returns_the_input(pipe):
    torch.testing.assert_close(run(pipe, strength=0.0), IMAGE, rtol=0, atol=1e-6)


def test_distance_to_input_grows_with_strength(pipe):
    mse = [((run(pipe, strength=s, num_inference_steps=20) - IMAGE) ** 2).mean().item() for s in (0.1, 0.4, 0.7, 1.0)]
    assert mse == sorted(mse) and mse[0] < 0.05, mse


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS)
def test_every_scheduler_img2img_and_inpainting(scheduler_cls):
    pipe = make(scheduler_cls=scheduler_cls)
    out = run(pipe, strength=0.5)
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    inpainted = run(pipe, strength=0.75, mask_image=MASK)
    torch.testing.assert_close(inpainted[..., 4:], IMAGE[..., 4:], rtol=0, atol=1e-6)
    assert (inpainted[..., :4] - IMAGE[..., :4]).abs().max() > 0.05


def test_inpainting_pil_keeps_the_known_region_exactly(pipe):
    image = Image.fromarray((IMAGE[0, 0].numpy() * 255).round().astype(np.uint8))
    mask = Image.fromarray((MASK[0, 0].numpy() * 255).astype(np.uint8))
    out = run(pipe, image=image, mask_image=mask, strength=1.0, output_type="pil")[0]
    assert out.mode == "L" and out.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(out)[:, 4:], np.asarray(image)[:, 4:])


def test_output_types_batch_and_tuple(pipe):
    assert run(pipe, output_type="np").shape == (1, 8, 8, 1)
    batch = pipe(
        image=IMAGE.repeat(2, 1, 1, 1), strength=0.5, num_inference_steps=4, output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
    ).images  # fmt: skip
    singles = [run(pipe, seed=s, strength=0.5, output_type="np")[0] for s in (1, 2)]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-5)
    as_tuple = pipe(image=IMAGE, strength=0.5, num_inference_steps=4, output_type="np", return_dict=False,
                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    np.testing.assert_array_equal(as_tuple[0], singles[0][None])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": "high"}, "strength"),
        ({"strength": 0.1, "num_inference_steps": 4}, "strength"),
        ({"mask_image": torch.zeros(1, 1, 4, 4)}, "mask_image"),
        ({"mask_image": torch.zeros(1, 3, 8, 8)}, "mask_image"),
        ({"image": torch.rand(1, 3, 8, 8)}, "image"),
        ({"image": torch.rand(1, 1, 8, 8) * 2 - 1}, "image"),
        ({"image": torch.rand(1, 1, 7, 7)}, "height"),
        ({"image": None}, "image"),
        ({"class_labels": [1]}, "class_labels"),
        ({"latents": torch.randn(1, 1, 4, 4)}, "latents"),
    ],
)
def test_bad_arguments_raise_naming_them(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run(pipe, **kwargs)


def test_resize_with_height_and_width(pipe):
    out = run(pipe, image=torch.rand(1, 1, 16, 16), mask_image=torch.zeros(1, 1, 16, 16), height=8, width=8)
    assert out.shape == (1, 1, 8, 8)


def test_class_conditional_model():
    unet = tiny_unet(variant="cfg-tiny-8")
    pipe = DiffusionImg2ImgPipeline(unet=unet, scheduler=DDPMAncestralScheduler.from_config(scheduler_config()),
                                    id2label={i: f"d{i}" for i in range(10)})  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    out = run(pipe, class_labels=["d3", 5], strength=0.6, guidance_scale=3.0)
    assert out.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="class_labels"):
        run(pipe, strength=0.6)
    plain = ClassConditionalDiffusionPipeline(unet=unet, scheduler=pipe.scheduler)
    plain.set_progress_bar_config(disable=True)
    expected = plain(class_labels=[3], guidance_scale=3.0, num_inference_steps=4, output_type="pt",
                     generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    torch.testing.assert_close(run(pipe, class_labels=[3], guidance_scale=3.0, strength=1.0), expected, rtol=0, atol=0)


def test_save_load_and_cross_class_loading(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "img2img")
    reloaded = DiffusionImg2ImgPipeline.from_pretrained(tmp_path / "img2img")
    reloaded.set_progress_bar_config(disable=True)
    # 1e-6, not bit-exact: a reloaded tiny UNet differed by ~3e-7 in one pixel on this CPU (to be investigated)
    torch.testing.assert_close(run(reloaded, strength=0.5), run(pipe, strength=0.5), rtol=0, atol=1e-6)
    make(UnconditionalDiffusionPipeline).save_pretrained(tmp_path / "uncond")
    loaded = DiffusionImg2ImgPipeline.from_pretrained(tmp_path / "uncond")
    assert type(loaded) is DiffusionImg2ImgPipeline
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, strength=0.5), run(pipe, strength=0.5), rtol=0, atol=1e-6)
    cfg = ClassConditionalDiffusionPipeline(
        unet=tiny_unet(variant="cfg-tiny-8"), scheduler=pipe.scheduler, id2label={i: f"d{i}" for i in range(10)}
    )
    cfg.save_pretrained(tmp_path / "cfg")
    loaded = DiffusionImg2ImgPipeline.from_pretrained(tmp_path / "cfg")
    assert type(loaded) is DiffusionImg2ImgPipeline and loaded.labels["d3"] == 3 and loaded.is_class_conditional


def test_uint8_numpy_images_equal_their_float_version_and_bad_values_are_refused(pipe):
    array = (IMAGE[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    as_uint8 = run(pipe, image=array, strength=0.5)
    as_float = run(pipe, image=array.astype(np.float32) / 255, strength=0.5)
    torch.testing.assert_close(as_uint8, as_float, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match=r"image as a numpy array or torch tensor must hold floats in \[0, 1\]"):
        run(pipe, image=IMAGE * 2)
    with pytest.raises(ValueError, match="image must hold finite values"):
        run(pipe, image=IMAGE * float("nan"))
    with pytest.raises(ValueError, match=r"image is empty \(shape \(0, 8, 1\)\)"):
        run(pipe, image=np.zeros((0, 8, 1), np.float32))
