import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from custom_pipelines.models import resolve_attention_backend, set_attention_backend
from tests.utils import tiny_unet


def processors(model):
    return {type(m.processor) for m in model.modules() if hasattr(m, "processor")}


def test_math_and_sdpa_attention_agree_forward_and_backward():
    unet = tiny_unet()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 30, 60, 99])
    results = {}
    for backend in ("sdpa", "math"):
        assert set_attention_backend(unet, backend) == backend
        assert processors(unet) == {AttnProcessor2_0 if backend == "sdpa" else AttnProcessor}
        unet.zero_grad()
        out = unet(x, t).sample
        out.square().mean().backward()
        results[backend] = (out.detach(), [p.grad.clone() for p in unet.parameters()])
    assert torch.allclose(results["sdpa"][0], results["math"][0], atol=1e-5)
    for a, b in zip(results["sdpa"][1], results["math"][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_math_attention_matches_fp32():
    unet = tiny_unet()
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 80])
    reference = unet(x, t).sample
    set_attention_backend(unet, "math")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = unet(x, t).sample.float()
    assert (low - reference).abs().max() < 0.05 * reference.abs().max()


def test_auto_backend_and_bad_names():
    """auto: plain matmuls only for low-precision compute on CPU (measured faster there), SDPA otherwise."""
    assert resolve_attention_backend("auto", "cpu", torch.bfloat16) == "math"
    assert resolve_attention_backend("auto", "cpu", torch.float32) == "sdpa"
    assert resolve_attention_backend("auto", "cpu") == "sdpa"  # fp32 unless told
    assert resolve_attention_backend("auto", torch.device("cuda", 0), torch.bfloat16) == "sdpa"
    assert resolve_attention_backend("sdpa", "cpu", torch.bfloat16) == "sdpa"
    unet = tiny_unet()
    assert set_attention_backend(unet, "auto") == "sdpa" and processors(unet) == {AttnProcessor2_0}
    assert set_attention_backend(unet.to(torch.bfloat16), "auto") == "math" and processors(unet) == {AttnProcessor}
    with pytest.raises(ValueError, match=r"attention backend must be one of \('auto', 'sdpa', 'math'\)"):
        set_attention_backend(unet, "flash")
