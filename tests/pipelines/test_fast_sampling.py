"""`enable_fast_sampling`: bf16 / matmul attention / torch.compile give the plain pipeline's images within tolerance,
and the pipeline still saves and loads as before."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from custom_pipelines import StyleGANPipeline, UnconditionalDiffusionPipeline, enable_fast_sampling
from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from tests.gan.conftest import tiny_stylegan
from tests.utils import scheduler_config, tiny_unet


def make_pipe(**unet_overrides) -> UnconditionalDiffusionPipeline:
    pipe = UnconditionalDiffusionPipeline(
        unet=tiny_unet(**unet_overrides), scheduler=DDIMEtaScheduler.from_config(scheduler_config())
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, steps=3):
    return pipe(
        batch_size=4, num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(0)
    ).images


def processors(unet):
    found = {type(m.processor) for m in unet.modules() if isinstance(m, Attention)}
    assert found, "the tiny UNet has attention layers"
    return found


def test_bf16_and_matmul_attention_match_fp32():
    reference = sample(make_pipe())
    pipe = enable_fast_sampling(make_pipe(), torch_dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16
    assert processors(pipe.unet) == {AttnProcessor}  # "auto" on CPU
    images = sample(pipe)
    assert images.dtype == torch.float32
    assert (images - reference).abs().mean() < 0.005 and (images - reference).abs().max() < 0.05


def test_fp32_with_sdpa_is_exact_and_backend_switches():
    reference = sample(make_pipe())
    pipe = enable_fast_sampling(make_pipe(), torch_dtype=None, attention_backend="sdpa")
    assert pipe.unet.dtype == torch.float32 and processors(pipe.unet) == {AttnProcessor2_0}
    torch.testing.assert_close(sample(pipe), reference, atol=1e-5, rtol=0)
    enable_fast_sampling(pipe, torch_dtype=torch.float32, attention_backend="math")
    assert processors(pipe.unet) == {AttnProcessor}
    torch.testing.assert_close(sample(pipe), reference, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_unet_matches_eager_and_saves_plain_weights(tmp_path):
    """torch.compile (inductor, the slow test of this file: ~10-30 s of compilation on CPU)."""
    reference = sample(make_pipe(), steps=2)
    pipe = enable_fast_sampling(make_pipe(), torch_dtype=None, compile=True)
    torch.testing.assert_close(sample(pipe, steps=2), reference, atol=2e-4, rtol=0)
    pipe.save_pretrained(tmp_path)
    loaded = UnconditionalDiffusionPipeline.from_pretrained(tmp_path)
    saved = loaded.unet.state_dict()
    assert saved.keys() == make_pipe().unet.state_dict().keys()  # no "_orig_mod." prefixes
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(saved[name], tensor), name


def test_gan_pipeline_runs_in_bf16():
    pipe = StyleGANPipeline(stylegan=tiny_stylegan())
    pipe.set_progress_bar_config(disable=True)
    enable_fast_sampling(pipe, torch_dtype=torch.bfloat16)
    assert pipe.stylegan.dtype == torch.bfloat16
    images = pipe(batch_size=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 16, 16) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"torch_dtype": "int8"}, ValueError, "torch_dtype must be 'auto', one of"),
        ({"torch_dtype": torch.int64}, ValueError, "torch_dtype must be 'auto', one of"),
        ({"attention_backend": "flash"}, ValueError, "attention_backend must be one of"),
        ({"compile": "yes"}, TypeError, "compile must be a bool"),
        ({"channels_last": 1}, TypeError, "channels_last must be a bool"),
    ],
)
def test_bad_arguments_raise(kwargs, error, message):
    pipe = make_pipe()
    with pytest.raises(error, match=message):
        enable_fast_sampling(pipe, **kwargs)
    assert pipe.unet.dtype == torch.float32  # nothing changed before the check failed


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_class_conditional_guided_pipeline_in_bf16(method):
    from tests.pipelines.test_pipeline_class_conditional import make_pipe as make_cfg_pipe

    def guided(pipe):
        return pipe(
            class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=3, output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip

    reference = guided(make_cfg_pipe(method))
    pipe = enable_fast_sampling(make_cfg_pipe(method), torch_dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16
    images = guided(pipe)
    assert images.dtype == torch.float32 and images.shape == reference.shape
    assert (images - reference).abs().mean() < 0.01 and (images - reference).abs().max() < 0.1


def test_keep_in_fp32_modules_stay_fp32_and_no_spurious_warning():
    import logging

    from diffusers.utils import logging as diffusers_logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler, logger = Collect(), logging.getLogger("diffusers")
    pipe = make_pipe()
    original = type(pipe.unet)._keep_in_fp32_modules
    type(pipe.unet)._keep_in_fp32_modules = ["time_embedding"]
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        tiny_unet().to(torch.bfloat16)  # ModelMixin.to: diffusers warns on every dtype cast
        assert any("should be kept in float32" in m for m in handler.messages)
        handler.messages.clear()
        enable_fast_sampling(pipe, torch_dtype="bf16")
        assert not any("should be kept in float32" in m for m in handler.messages)
    finally:
        logger.removeHandler(handler)
        type(pipe.unet)._keep_in_fp32_modules = original
        diffusers_logging.set_verbosity(verbosity)
    assert pipe.unet.time_embedding.linear_1.weight.dtype == torch.float32
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
