import importlib
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image

from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from custom_pipelines.schedulers.scheduling_dpmsolver_2m import DPMSolver2MScheduler
from tests.utils import scheduler_config, tiny_unet


@pytest.fixture
def pipe():
    pipe = UnconditionalDiffusionPipeline(
        unet=tiny_unet(), scheduler=DDPMAncestralScheduler.from_config(scheduler_config())
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_shapes_and_ranges(pipe):
    images = run(pipe, batch_size=3)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    pt = run(pipe, batch_size=2, output_type="pt")
    assert pt.shape == (2, 1, 8, 8)
    pil = run(pipe, batch_size=2, output_type="pil")
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].mode == "L" and pil[0].size == (8, 8)


def test_frozen_slice(pipe):
    images = run(pipe, batch_size=1)
    expected = np.array([[0.0, 0.008972, 0.323958], [0.652948, 0.0, 0.64349], [0.003634, 0.013316, 0.993697]])
    np.testing.assert_allclose(images[0, :3, :3, 0], expected, atol=1e-4)


def test_dict_equals_tuple(pipe):
    a = run(pipe, batch_size=2)
    b = pipe(
        batch_size=2,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        return_dict=False,
    )
    assert isinstance(b, tuple)
    np.testing.assert_array_equal(a, b[0])


def test_batch_equals_single_runs(pipe):
    batch = pipe(
        batch_size=2,
        num_inference_steps=3,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
        output_type="np",
    ).images
    singles = [
        pipe(
            batch_size=1, num_inference_steps=3, generator=[torch.Generator().manual_seed(s)], output_type="np"
        ).images[0]
        for s in (1, 2)
    ]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-5)


def test_latents_argument_is_used(pipe):
    latents = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a = pipe(
        latents=latents, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    b = pipe(
        latents=latents, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    c = run(pipe, seed=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_save_load_identical_and_model_index_importable(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "UnconditionalDiffusionPipeline"]  # with the pipeline.py shim
    assert index["scheduler"] == ["custom_pipelines.schedulers.scheduling_ddpm_ancestral", "DDPMAncestralScheduler"]
    for name in ("unet", "scheduler"):
        library, class_name = index[name]
        assert hasattr(importlib.import_module(library), class_name)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UnconditionalDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(pipe, batch_size=2), run(loaded, batch_size=2))


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler, DDPMScheduler])
def test_diffusers_schedulers_run_inside_ours(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    images = run(pipe, batch_size=2, num_inference_steps=3)
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_ddim_in_ours_matches_stock_ddim_pipeline(pipe):
    """Same UNet, same noise, same DDIM (η=0): our pipeline and diffusers' DDIMPipeline agree."""
    ours = DDIMEtaScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = ours
    stock = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(ours.config))
    stock.set_progress_bar_config(disable=True)
    a = run(pipe, num_inference_steps=4)
    b = stock(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np", eta=0.0).images
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_our_scheduler_inside_stock_ddpm_pipeline(pipe):
    stock = DDPMPipeline(unet=pipe.unet, scheduler=DPMSolver2MScheduler.from_config(pipe.scheduler.config))
    stock.set_progress_bar_config(disable=True)
    images = stock(
        batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_callback_on_step_end_can_replace_latents(pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    images = run(pipe, num_inference_steps=3, callback_on_step_end=callback, output_type="pt")
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 1, 8, 8)
    torch.testing.assert_close(images, torch.full_like(images, 0.5))  # zero latents decode to mid-gray


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_inference_steps": -1}, "num_inference_steps"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"latents": torch.zeros(1, 3, 8, 8)}, "latents"),
        ({"callback_on_step_end_tensor_inputs": ["unet"]}, "callback_on_step_end_tensor_inputs"),
        ({"generator": [torch.Generator(), torch.Generator()]}, "generator"),
    ],
)
def test_bad_arguments_raise(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_inference_steps": 2, **kwargs})


def test_bf16_unet_fast_path_keeps_fp32_state_and_matches_fp32(pipe):
    """`torch_dtype=torch.bfloat16`: the UNet runs in bf16, x_t stays fp32, images agree with fp32 to bf16 accuracy."""
    reference = run(pipe, batch_size=2, num_inference_steps=3, output_type="pt")
    fast = UnconditionalDiffusionPipeline(unet=tiny_unet().to(torch.bfloat16), scheduler=pipe.scheduler)
    fast.set_progress_bar_config(disable=True)
    dtypes = []
    images = run(
        fast,
        batch_size=2,
        num_inference_steps=3,
        output_type="pt",
        callback_on_step_end=lambda p, i, t, tensors: dtypes.append(tensors["latents"].dtype) or {},
    )
    assert dtypes == [torch.float32] * 3 and images.dtype == torch.float32
    assert (images - reference).abs().mean() < 0.005 and (images - reference).abs().max() < 0.05
