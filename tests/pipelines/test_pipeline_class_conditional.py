import importlib
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from custom_pipelines.data import DIGIT_NAMES
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.class_conditioning import class_conditional_unet_config
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from tests.utils import scheduler_config

ID2LABEL = dict(enumerate(DIGIT_NAMES))


def make_pipe(method="embedding", id2label=ID2LABEL, seed=0):
    cls, config = class_conditional_unet_config(load_component_config("cfg-tiny-8", "unet"), method, 10)
    torch.manual_seed(seed)
    unet = cls.from_config(config).eval()
    scheduler = DDPMAncestralScheduler.from_config(scheduler_config("cfg-tiny-8"))
    pipe = ClassConditionalDiffusionPipeline(unet=unet, scheduler=scheduler, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe():
    return make_pipe()


def run(pipe, class_labels=(3,), seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(class_labels=list(class_labels), generator=torch.Generator().manual_seed(seed), **kwargs).images


def manual_loop(pipe, labels, seed, steps, combine):
    """Ho et al. Algorithm 2 written out: `combine(x_t, t, labels)` gives the model output."""
    generator = torch.Generator().manual_seed(seed)
    x = randn_tensor((len(labels), 1, 8, 8), generator=generator, dtype=torch.float32)
    pipe.scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(combine(x, t, labels), t, x, generator=generator).prev_sample
    return x


def test_shapes_and_ranges(pipe):
    images = run(pipe, [0, 1, 2])
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert run(pipe, [1, 2], output_type="pt").shape == (2, 1, 8, 8)
    pil = run(pipe, [1, 2], output_type="pil")
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].mode == "L" and pil[0].size == (8, 8)


def test_frozen_slice(pipe):
    images = run(pipe, [3], guidance_scale=3.0)
    expected = np.array([[0.0, 0.18678, 0.68987], [0.58029, 0.0, 0.4431], [0.00497, 0.02782, 0.79469]])
    np.testing.assert_allclose(images[0, :3, :3, 0], expected, atol=1e-4)


def test_dict_equals_tuple(pipe):
    a = run(pipe, [3, 7])
    b = pipe(class_labels=[3, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np",
             return_dict=False)  # fmt: skip
    assert isinstance(b, tuple)
    np.testing.assert_array_equal(a, b[0])


def test_batch_equals_single_runs(pipe):
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batch = pipe(class_labels=[4, 8], num_inference_steps=3, generator=gens, output_type="np").images
    singles = [
        pipe(
            class_labels=[label], num_inference_steps=3, generator=[torch.Generator().manual_seed(s)], output_type="np"
        ).images[0]
        for label, s in ((4, 1), (8, 2))
    ]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-5)


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_batched_cfg_sampling_equals_two_passes_combined(method):
    pipe, w, labels = make_pipe(method), 2.5, [1, 6]

    def two_passes(x, t, labels):
        eps_c = pipe.unet(x, t, class_labels=torch.tensor(labels)).sample
        eps_u = pipe.unet(x, t, class_labels=torch.full((len(labels),), 10)).sample
        return eps_u + w * (eps_c - eps_u)

    expected = manual_loop(pipe, labels, seed=0, steps=3, combine=two_passes)
    images = run(pipe, labels, guidance_scale=w, num_inference_steps=3, output_type="latent")
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-4)


def test_guidance_scale_one_is_plain_conditional_and_zero_unconditional(pipe):
    labels = [2, 9]

    def conditional(x, t, labels):
        return pipe.unet(x, t, class_labels=torch.tensor(labels)).sample

    def unconditional(x, t, labels):
        return pipe.unet(x, t, class_labels=torch.full((len(labels),), 10)).sample

    for w, combine in ((1.0, conditional), (0.0, unconditional)):
        expected = manual_loop(pipe, labels, seed=0, steps=3, combine=combine)
        images = run(pipe, labels, guidance_scale=w, num_inference_steps=3, output_type="latent")
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)


def test_class_names_and_ids_agree(pipe):
    by_name = run(pipe, ["three", "seven"])
    np.testing.assert_array_equal(by_name, run(pipe, [3, 7]))
    np.testing.assert_array_equal(run(pipe, [3, "seven"]), by_name)
    np.testing.assert_array_equal(run(pipe, np.array([3, 7])), by_name)  # numpy ints too
    single = pipe(class_labels="three", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images  # fmt: skip
    np.testing.assert_array_equal(single, run(pipe, [3]))
    assert pipe.get_label_ids(torch.tensor([1, 2])) == [1, 2]
    assert pipe.labels["nine"] == 9 and pipe.num_classes == 10 and pipe.null_class_id == 10


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_save_load_identical_and_id2label_round_trip(method, tmp_path):
    pipe = make_pipe(method)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ClassConditionalDiffusionPipeline"]  # with the pipeline.py shim
    assert index["id2label"] == {str(i): name for i, name in enumerate(DIGIT_NAMES)}
    assert index["unet"] == (
        ["diffusers", "UNet2DModel"]
        if method == "embedding"
        else ["custom_pipelines.models.unet_class_concat", "ClassConcatUNet2DModel"]
    )
    for name in ("unet", "scheduler"):
        library, class_name = index[name]
        assert hasattr(importlib.import_module(library), class_name)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ClassConditionalDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet) is type(pipe.unet)
    assert loaded.config.id2label == pipe.config.id2label and loaded.labels == pipe.labels
    np.testing.assert_array_equal(run(loaded, ["three", 5], guidance_scale=2.0), run(pipe, [3, 5], guidance_scale=2.0))
    assert set(loaded.components) == {"unet", "scheduler"}


def test_without_id2label_ids_work_and_names_fail(tmp_path):
    pipe = make_pipe(id2label=None)
    assert run(pipe, [0, 9]).shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="no id2label"):
        run(pipe, ["three"])
    pipe.save_pretrained(tmp_path)
    assert ClassConditionalDiffusionPipeline.from_pretrained(tmp_path).config.id2label is None


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_diffusers_schedulers_run_inside(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    images = run(pipe, [1, 2], num_inference_steps=3)
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_callback_on_step_end(pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])}

    images = run(pipe, [1], num_inference_steps=3, callback_on_step_end=callback, output_type="pt")
    assert seen == [0, 1, 2]
    torch.testing.assert_close(images, torch.full_like(images, 0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": ["tree"]}, "unknown class name 'tree'"),
        ({"class_labels": [10]}, r"class_labels ids must be in \[0, 9\], got 10"),
        ({"class_labels": [-1]}, r"class_labels ids must be in \[0, 9\], got -1"),
        ({"class_labels": []}, "non-empty"),
        ({"class_labels": None}, "non-empty"),
        ({"class_labels": [True]}, "int ids or str names"),
        ({"class_labels": [2.0]}, "int ids or str names"),
        ({"guidance_scale": -0.5}, "guidance_scale must be a finite float >= 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite float >= 0"),
        ({"guidance_scale": "high"}, "guidance_scale must be a float >= 0"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"latents": torch.zeros(1, 3, 8, 8)}, "latents"),
        ({"generator": [torch.Generator(), torch.Generator()]}, "generator"),
        ({"callback_on_step_end_tensor_inputs": ["unet"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments_raise(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**{"class_labels": [3], "num_inference_steps": 2, **kwargs})


def test_bad_id2label_and_unconditional_unet_raise():
    with pytest.raises(ValueError, match=r"id2label must name every class id 0..9"):
        make_pipe(id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="id2label names must be unique"):
        make_pipe(id2label={i: "same" for i in range(10)})
    from tests.utils import tiny_unet

    with pytest.raises(ValueError, match="not class-conditional"):
        ClassConditionalDiffusionPipeline(unet=tiny_unet(), scheduler=DDPMAncestralScheduler())
