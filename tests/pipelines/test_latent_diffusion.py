"""LatentDiffusionPipeline on tiny components (sizes from hub_configs/ldm-*-32, narrowed): unconditional, class (CFG)
and text (cross-attention, a BERT text encoder + tokenizer); frozen slices, save/load, interop with diffusers' own
StableDiffusionPipeline / StableDiffusionImg2ImgPipeline, bad arguments."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import BertConfig, BertModel

from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.autoencoder import decode_latents, encode_latents
from custom_pipelines.models.text_encoder import default_text_encoder_path
from custom_pipelines.pipelines.pipeline_img2img import LatentImg2ImgPipeline
from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler

VAE_NARROW = {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "sample_size": 16}
UNET_NARROW = {"block_out_channels": [8, 16], "norm_num_groups": 4, "sample_size": 4, "attention_head_dim": 4}
DIGITS = [f"a handwritten digit {n}" for n in ("zero", "one", "two", "three")]


def tiny_vae(scaling_factor=1.0, shift_factor=None):
    torch.manual_seed(0)
    config = {**load_component_config("ldm-digits-32", "vae"), **VAE_NARROW}
    return AutoencoderKL.from_config({**config, "scaling_factor": scaling_factor, "shift_factor": shift_factor}).eval()


def scheduler(cls=DDPMAncestralScheduler):
    return cls.from_config(load_component_config("ldm-digits-32", "scheduler", "scheduler_config.json"))


def tiny_text_encoder(max_length=8):
    """A 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's real tokenizer (offline, from the package)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_text_encoder_path(), local_files_only=True)
    tokenizer.model_max_length = max_length
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    return BertModel(config).eval(), tokenizer


def make(kind="text", scheduler_cls=DDPMAncestralScheduler, **vae_kwargs):
    vae = tiny_vae(**vae_kwargs)
    torch.manual_seed(1)
    extra = {}
    if kind == "text":
        text_encoder, tokenizer = tiny_text_encoder()
        config = {**load_component_config("ldm-text-digits-32", "unet"), **UNET_NARROW, "cross_attention_dim": 32}
        unet = UNet2DConditionModel.from_config(config).eval()
        extra = {"text_encoder": text_encoder, "tokenizer": tokenizer}
    elif kind == "class":
        config = {**load_component_config("ldm-digits-32", "unet"), **UNET_NARROW, "num_class_embeds": 4}
        unet = UNet2DModel.from_config(config).eval()
        extra = {"id2label": {0: "zero", 1: "one", 2: "two"}}
    elif kind == "none":
        unet = UNet2DModel.from_config({**load_component_config("ldm-digits-32", "unet"), **UNET_NARROW}).eval()
    else:
        raise ValueError(kind)
    pipe = LatentDiffusionPipeline(vae=vae, unet=unet, scheduler=scheduler(scheduler_cls), **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def text_pipe():
    return make("text")


@pytest.fixture(scope="module")
def class_pipe():
    return make("class")


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


# ----- shapes, frozen numbers, batching ----------------------------------------------------------------------------
FROZEN = {  # images[0, 5:8, 5:8, 0] after 2 DDPM steps, seed 0 (fp32; measured on an AVX-512 Xeon)
    "none": [[0.5241, 0.5065, 0.5408], [0.3443, 0.2779, 0.5199], [0.2797, 0.0454, 0.2837]],
    "class": [[0.3257, 0.4012, 0.4525], [0.2076, 0.1621, 0.3213], [0.3741, 0.1304, 0.177]],
    "text": [[0.295, 0.3796, 0.4939], [0.0573, 0.1239, 0.4557], [0.2286, 0.1058, 0.2934]],
}
CALLS = {"none": {"batch_size": 2}, "class": {"class_labels": [1, "two"]}, "text": {"prompt": DIGITS[:2]}}


@pytest.mark.parametrize("kind", ["none", "class", "text"])
def test_shapes_range_and_frozen_slice(kind):
    pipe = make(kind)
    images = run(pipe, **CALLS[kind])
    assert images.shape == (2, 16, 16, 1) and 0 <= images.min() and images.max() <= 1
    np.testing.assert_allclose(images[0, 5:8, 5:8, 0], FROZEN[kind], atol=1e-4)
    latents = run(pipe, output_type="latent", **CALLS[kind])
    assert latents.shape == (2, 4, 4, 4)  # f = 4: 16×16 pixels ↔ 4×4 latents


def test_dict_equals_tuple_and_batch_equals_single_runs(text_pipe):
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    batch = text_pipe(prompt=DIGITS[:2], num_inference_steps=2, generator=generators, output_type="np").images
    (as_tuple,) = text_pipe(prompt=DIGITS[:2], num_inference_steps=2, output_type="np", return_dict=False,
                            generator=[torch.Generator().manual_seed(s) for s in (3, 4)])  # fmt: skip
    np.testing.assert_array_equal(batch, as_tuple)
    for i, (prompt, seed) in enumerate(zip(DIGITS[:2], (3, 4))):
        np.testing.assert_allclose(run(text_pipe, seed=seed, prompt=prompt)[0], batch[i], atol=1e-5)


def test_num_images_per_prompt_keeps_the_copies_of_a_prompt_together(text_pipe):
    images = run(text_pipe, prompt=DIGITS[:2], num_images_per_prompt=3)
    assert images.shape == (6, 16, 16, 1)
    embeds, negative = text_pipe.encode_prompt(DIGITS[:2], num_images_per_prompt=3)
    assert embeds.shape == negative.shape == (6, 8, 32)
    torch.testing.assert_close(embeds[0], embeds[2])
    torch.testing.assert_close(embeds[3], embeds[5])
    assert not torch.allclose(embeds[2], embeds[3])


# ----- conditioning ----------------------------------------------------------------------------------------------
def test_text_changes_the_output(text_pipe):
    a, b = run(text_pipe, prompt=DIGITS[0], guidance_scale=3.0), run(text_pipe, prompt=DIGITS[1], guidance_scale=3.0)
    assert np.abs(a - b).max() > 1e-4


def test_empty_prompt_is_the_unconditional_branch(text_pipe):
    """prompt "" makes both branches the empty caption: any w gives ε_u, which is also w = 0 for any prompt."""
    empty = run(text_pipe, prompt="", guidance_scale=3.0)
    np.testing.assert_allclose(empty, run(text_pipe, prompt="", guidance_scale=1.0), atol=1e-5)
    np.testing.assert_allclose(empty, run(text_pipe, prompt=DIGITS[2], guidance_scale=0.0), atol=1e-5)
    negative = run(text_pipe, prompt=DIGITS[2], negative_prompt=DIGITS[3], guidance_scale=3.0)
    assert np.abs(negative - run(text_pipe, prompt=DIGITS[2], guidance_scale=3.0)).max() > 1e-4


def test_class_guidance_one_and_zero_are_single_branches(class_pipe):
    conditional = run(class_pipe, class_labels=[1], guidance_scale=1.0)
    unconditional = run(class_pipe, class_labels=[1], guidance_scale=0.0)
    assert np.abs(conditional - unconditional).max() > 1e-4
    np.testing.assert_allclose(unconditional, run(class_pipe, class_labels=[2], guidance_scale=0.0), atol=1e-6)
    np.testing.assert_array_equal(run(class_pipe, class_labels=["one"]), run(class_pipe, class_labels=[1]))


def test_callback_on_step_end_sees_and_replaces_tensors(text_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, sorted(tensors)))
        if i == 0:
            pipe._guidance_scale = 1.0  # guidance off from the next step on
        return {"latents": tensors["latents"]}

    run(text_pipe, prompt=DIGITS[0], guidance_scale=3.0, callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])  # fmt: skip
    assert seen == [(0, ["latents", "prompt_embeds"]), (1, ["latents", "prompt_embeds"])]
    assert not text_pipe.do_classifier_free_guidance


def test_scaling_factor_applied_exactly_once():
    """decode_latents(z) with scale s and shift m decodes z / s + m: a known latent through both VAEs."""
    plain, scaled = tiny_vae(), tiny_vae(scaling_factor=0.5, shift_factor=0.25)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(decode_latents(scaled, z), decode_latents(plain, z / 0.5 + 0.25))
        image = torch.rand(1, 1, 16, 16) * 2 - 1
        mean = plain.encode(image).latent_dist.mode()
        torch.testing.assert_close(encode_latents(scaled, image, sample=False), (mean - 0.25) * 0.5)
    pipe_plain, pipe_scaled = make("none"), make("none", scaling_factor=0.5, shift_factor=0.25)
    latents = run(pipe_scaled, batch_size=1, output_type="latent")
    torch.testing.assert_close(latents, run(pipe_plain, batch_size=1, output_type="latent"))  # same UNet
    with torch.no_grad():
        expected = (decode_latents(pipe_plain.vae, latents / 0.5 + 0.25) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(run(pipe_scaled, batch_size=1, output_type="pt"), expected, atol=1e-6, rtol=0)


# ----- save / load ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "class"])
def test_save_load_identical_with_tokenizer_and_text_encoder(kind, tmp_path):
    pipe = make(kind)
    call = {"prompt": DIGITS[:2]} if kind == "text" else {"class_labels": ["zero", 2]}
    expected = run(pipe, guidance_scale=2.5, **call)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    if kind == "text":
        assert index["text_encoder"] == ["transformers", "BertModel"]
        assert index["tokenizer"][0] == "transformers" and (tmp_path / "tokenizer" / "tokenizer_config.json").is_file()
    for loaded in (LatentDiffusionPipeline.from_pretrained(tmp_path),
                   DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)):  # fmt: skip
        assert type(loaded) is LatentDiffusionPipeline
        loaded.set_progress_bar_config(disable=True)
        if kind == "text":
            assert loaded.tokenizer.model_max_length == 8 and type(loaded.text_encoder) is BertModel
        else:
            assert loaded.labels == {"zero": 0, "one": 1, "two": 2}
        np.testing.assert_array_equal(run(loaded, guidance_scale=2.5, **call), expected)


# ----- diffusers' own Stable Diffusion pipelines run our text model -------------------------------------------------
def stable_diffusion(pipe, cls=StableDiffusionPipeline):
    sd = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
             scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
             requires_safety_checker=False)  # fmt: skip
    sd.set_progress_bar_config(disable=True)
    return sd


@pytest.mark.parametrize("scheduler_cls", [DDPMAncestralScheduler, DDIMScheduler, EulerDiscreteScheduler])
def test_stable_diffusion_pipeline_gives_the_same_images(scheduler_cls):
    """Same prompt encoding (padding to model_max_length, no attention mask for BERT, "" as the negative), same noise
    draw, same [uncond; cond] batch, same step and same decoding: bit-identical images."""
    pipe = make("text", scheduler_cls=scheduler_cls, scaling_factor=0.7)
    sd = stable_diffusion(pipe)
    call = {"prompt": DIGITS[:2], "num_images_per_prompt": 2, "guidance_scale": 3.0, "num_inference_steps": 3}
    ours = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    theirs = sd(generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    assert theirs.shape == ours.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(theirs, ours)
    negative = {**call, "negative_prompt": [DIGITS[3], DIGITS[0]]}
    np.testing.assert_array_equal(
        sd(generator=torch.Generator().manual_seed(1), output_type="np", **negative).images,
        pipe(generator=torch.Generator().manual_seed(1), output_type="np", **negative).images,
    )


def test_stable_diffusion_img2img_pipeline_gives_the_same_images():
    """StableDiffusionImg2ImgPipeline encodes a pixel image with a posterior SAMPLE drawn from the generator before the
    noise; LatentImg2ImgPipeline takes the posterior mean and leaves the generator to the noise. Given the same
    start latents (SD takes 4-channel latents as `image`), both run the same SDEdit steps."""
    pipe = make("text", scaling_factor=0.7)
    img2img = LatentImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    sd = stable_diffusion(pipe, StableDiffusionImg2ImgPipeline)
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z0 = encode_latents(pipe.vae, image * 2 - 1, sample=False)  # scaled once, as SD's pixel path scales
    call = {"prompt": DIGITS[1], "strength": 0.5, "guidance_scale": 3.0, "num_inference_steps": 4}
    ours = img2img(image=image, generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    theirs = sd(image=z0, generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    np.testing.assert_array_equal(theirs, ours)


# ----- bad arguments --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, kwargs, error, message",
    [
        ("text", {"prompt": DIGITS[:2], "negative_prompt": DIGITS[:3]}, ValueError, "negative_prompt"),
        ("text", {"prompt": DIGITS[:2], "batch_size": 3}, ValueError, "batch_size=3 does not match the 2"),
        ("text", {"prompt": []}, ValueError, "prompt must be a string"),
        ("text", {"prompt": 3}, TypeError, "prompt must be a string"),
        ("text", {"prompt": None}, ValueError, "prompt is required"),
        ("text", {"prompt": "a", "class_labels": [1]}, ValueError, "class_labels need a class-conditional"),
        ("text", {"prompt": "a", "guidance_scale": -1.0}, ValueError, "guidance_scale must be"),
        ("text", {"prompt": "a", "guidance_scale": "high"}, TypeError, "guidance_scale must be a float"),
        ("text", {"prompt": "a", "height": 12}, ValueError, "height must be divisible by 8"),
        ("text", {"prompt": "a", "width": 0}, ValueError, "width"),
        ("text", {"prompt": "a", "num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ("text", {"prompt": "a", "output_type": "jpg"}, ValueError, "output_type"),
        ("text", {"prompt": "a", "latents": torch.zeros(1, 4, 8, 8)}, ValueError, "latents"),
        ("text", {"prompt": ["a", "b"], "generator": [torch.Generator()]}, ValueError, "generator"),
        ("text", {"prompt": "a", "callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "noise"),
        ("class", {"class_labels": [3]}, ValueError, r"class_labels ids must be in \[0, 2\], got 3"),
        ("class", {"class_labels": ["seven"]}, ValueError, "unknown class name 'seven'"),
        ("class", {"class_labels": None}, ValueError, "class_labels"),
        ("class", {"class_labels": [1], "prompt": "a"}, ValueError, "prompt / negative_prompt need a text"),
        ("none", {"guidance_scale": 2.0}, ValueError, "guidance_scale needs a conditional model"),
        ("none", {"batch_size": 0}, ValueError, "batch_size"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_naming_them(kind, kwargs, error, message):
    pipe = {"text": make, "class": make, "none": make}[kind](kind)
    with pytest.raises(error, match=message):
        pipe(num_inference_steps=2, **kwargs)


def test_bad_components_raise():
    pipe = make("text")
    with pytest.raises(ValueError, match="text_encoder and tokenizer"):
        LatentDiffusionPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler)(prompt="a")
    with pytest.raises(ValueError, match="id2label needs a class-conditional UNet"):
        LatentDiffusionPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler, id2label={0: "a"})
