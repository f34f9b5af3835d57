"""The compile check: a compiled model's first gradients must match eager mode's, or training stops with a clear
error. Compiles tiny modules (a few seconds each), so the compiling tests are marked slow."""

import pytest
import torch
import torch.nn.functional as F

from custom_pipelines.training import compile_check
from custom_pipelines.training.compile_check import (
    CompiledGradientMismatch,
    check_compiled_gradients,
    install_compile_check,
)
from training import train_ddpm


class ConvNet(torch.nn.Module):
    """conv → GroupNorm → SiLU → conv, + residual, nearest ×2 → conv; BatchNorm for a buffer the forward updates.
    `detach_when_compiled` cuts the graph only inside torch.compile: a stand-in for a miscompiled backward."""

    def __init__(self, detach_when_compiled: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.conv3 = (torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))
        self.norm, self.bn = torch.nn.GroupNorm(2, 8), torch.nn.BatchNorm2d(8)
        self.detach_when_compiled = detach_when_compiled

    def forward(self, x, scale: float = 1.0):
        h = self.conv2(F.silu(self.norm(self.conv1(x)))) + x
        if self.detach_when_compiled and torch.compiler.is_compiling():
            h = h.detach()
        h = F.interpolate(self.bn(h), scale_factor=2.0, mode="nearest")
        return {"sample": self.conv3(h) * scale}


def inputs():
    return (torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(1)),), {"scale": 2.0}


@pytest.mark.slow
def test_correct_compilation_passes_and_leaves_no_trace():
    model = ConvNet().train()
    compiled = torch.compile(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # gradients a caller has accumulated so far
    running_mean = model.bn.running_mean.clone()
    rng = torch.get_rng_state()
    args, kwargs = inputs()
    error = check_compiled_gradients(compiled, args, kwargs, name="net")
    assert error < 1e-4
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert torch.equal(model.bn.running_mean, running_mean)
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: within the autocast tolerance
        assert check_compiled_gradients(compiled, args, kwargs, name="net") < 2e-2


@pytest.mark.slow
def test_wrong_gradients_raise_with_the_parameters_named():
    compiled = torch.compile(ConvNet(detach_when_compiled=True).train())
    args, kwargs = inputs()
    with pytest.raises(
        CompiledGradientMismatch, match=r"wrong gradients for 'net'.*conv[12]\.(weight|bias).*0 vs"
    ) as err:
        check_compiled_gradients(compiled, args, kwargs, name="net")
    assert isinstance(err.value, ValueError)  # the scripts print ValueErrors without a traceback
    assert "--dynamo_backend no" in str(err.value) and "--compile_check off" in str(err.value)


def test_hook_runs_once_on_the_first_call_with_gradients(monkeypatch):
    calls = []
    monkeypatch.setattr(compile_check, "check_compiled_gradients", lambda *a, **k: calls.append(k["name"]))
    model = ConvNet()
    assert not install_compile_check(model, "plain")  # not compiled: nothing to check
    compiled = torch.compile(model, backend="eager")  # dynamo only: fast
    assert install_compile_check(compiled, "net")
    args, kwargs = inputs()
    with torch.no_grad():
        compiled(*args, **kwargs)  # sampling: no gradients to compare
    assert calls == []
    compiled(*args, **kwargs)
    compiled(*args, **kwargs)
    assert calls == ["net"]


@pytest.fixture
def fusion_limit(monkeypatch):
    """Inductor's fusion limit at its default for the test, put back afterwards; torch._dynamo.reset recorded."""
    from torch._inductor import config

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))
    with config.patch(max_fusion_size=64):  # (monkeypatch cannot undo on inductor's config module)
        yield config, resets


def fake_checks(monkeypatch, results):
    """check_compiled_gradients stand-in returning/raising `results` in turn; returns the list of calls."""
    calls = []

    def check(module, args, kwargs, name, low_precision):
        calls.append(name)
        result = results[len(calls) - 1]
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(compile_check, "check_compiled_gradients", check)
    return calls


def test_mismatch_on_cpu_recompiles_with_limited_fusion_and_checks_again(monkeypatch, fusion_limit, caplog):
    config, resets = fusion_limit
    mismatch = CompiledGradientMismatch("long message with advice", summary="wrong gradients for 'net'")
    calls = fake_checks(monkeypatch, [mismatch, 1e-3])
    compiled = torch.compile(ConvNet(), backend="eager")
    install_compile_check(compiled, "net")
    args, kwargs = inputs()
    with caplog.at_level("WARNING", logger=compile_check.__name__):
        out = compiled(*args, **kwargs)
    assert out["sample"].shape == (4, 8, 8, 8)
    assert calls == ["net", "net"] and config.max_fusion_size == 1 and resets == [True]
    assert "wrong gradients for 'net'. Recompiling every model with inductor's max_fusion_size=1" in caplog.text
    assert "advice" not in caplog.text


def test_mismatch_after_the_fallback_raises_and_says_so(monkeypatch, fusion_limit):
    config, _ = fusion_limit
    calls = fake_checks(monkeypatch, [CompiledGradientMismatch("first"), CompiledGradientMismatch("second")])
    compiled = torch.compile(ConvNet(), backend="eager")
    install_compile_check(compiled, "net")
    with pytest.raises(CompiledGradientMismatch, match=r"^second Recompiling with max_fusion_size=1 did not help"):
        compiled(*inputs()[0], **inputs()[1])
    assert len(calls) == 2 and config.max_fusion_size == 1


def test_no_fallback_when_fusion_is_already_limited(monkeypatch, fusion_limit):
    config, resets = fusion_limit
    config.max_fusion_size = 1
    calls = fake_checks(monkeypatch, [CompiledGradientMismatch("first")])
    compiled = torch.compile(ConvNet(), backend="eager")
    install_compile_check(compiled, "net")
    with pytest.raises(CompiledGradientMismatch, match="^first$"):
        compiled(*inputs()[0], **inputs()[1])
    assert calls == ["net"] and resets == []


def test_trainer_runs_the_check_and_stops_on_a_mismatch(tmp_path, monkeypatch, fusion_limit):
    seen = []

    def fake_check(module, args, kwargs, name, low_precision):
        seen.append((name, low_precision, type(module).__name__))
        raise CompiledGradientMismatch("torch.compile gives wrong gradients for 'unet'")

    monkeypatch.setattr(compile_check, "check_compiled_gradients", fake_check)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    from tests.training.test_train_ddpm import tiny_args

    args = train_ddpm.parse_args([*tiny_args(tmp_path / "run"), "--mixed_precision", "bf16", "--report_to", "none"])
    with pytest.raises(ValueError, match="wrong gradients for 'unet'.*max_fusion_size=1 did not help"):
        train_ddpm.main(args)
    assert seen == [("unet", True, "OptimizedModule")] * 2  # the check, and again after the CPU fallback
    extra = ["--compile_check", "off", "--max_train_steps", "1", "--mixed_precision", "bf16", "--report_to", "none"]
    off = train_ddpm.parse_args([*tiny_args(tmp_path / "off"), *extra])
    train_ddpm.main(off)  # the check is not installed: training runs
    assert len(seen) == 2


def upblock_case():
    """diffusers' UpBlock2D at batch 64, where PyTorch 2.13's CPU inductor zeroes the input gradient: the block, its
    inputs, the compiled block, and a function giving the block's flattened parameter gradients through a module."""
    from diffusers.models.unets.unet_2d_blocks import UpBlock2D

    torch.manual_seed(0)
    block = UpBlock2D(
        in_channels=16, prev_output_channel=16, out_channels=16, temb_channels=32, num_layers=2, resnet_groups=4
    ).train()
    args = (torch.randn(64, 16, 4, 4), (torch.randn(64, 16, 4, 4), torch.randn(64, 16, 4, 4)), torch.randn(64, 32))

    def grads(module):
        block.zero_grad(set_to_none=True)
        module(*args).backward(torch.ones(64, 16, 8, 8))
        return torch.cat([p.grad.flatten() for p in block.parameters()])

    return block, args, torch.compile(block), grads


@pytest.mark.slow
def test_pytorch_upblock_pattern_verdict_matches_a_direct_comparison():
    """Whatever the installed PyTorch does with the UpBlock2D pattern, the check must agree with a direct
    eager/compiled comparison."""
    block, args, compiled, grads = upblock_case()
    eager_grads, compiled_grads = grads(block), grads(compiled)
    block.zero_grad(set_to_none=True)
    direct = ((compiled_grads - eager_grads).norm() / eager_grads.norm()).item()
    if direct > 1e-2:  # the default fp32 tolerance
        with pytest.raises(CompiledGradientMismatch):
            check_compiled_gradients(compiled, args, {}, name="up_block")
    else:
        assert check_compiled_gradients(compiled, args, {}, name="up_block") < 1e-2


@pytest.mark.parametrize("loss", ["wgan_gp", "ns_r1"])
def test_gan_penalties_refuse_compile_with_a_clear_error(tmp_path, monkeypatch, loss):
    from training import train_gan

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    argv = ["--model_config", "dcgan-digits-32", "--dataset_name", "digits", "--output_dir", str(tmp_path),
            "--loss", loss, "--report_to", "none", "--max_train_steps", "1"]  # fmt: skip
    with pytest.raises(ValueError, match=f"--loss {loss} takes the gradient of a gradient"):
        train_gan.main(train_gan.parse_args(argv))


@pytest.mark.slow
def test_upblock_pattern_trains_with_correct_gradients_after_the_hook():
    """End to end on the real pattern: after the hooked first call (on PyTorch 2.13 CPU: mismatch, recompile with
    limited fusion, pass) the compiled block's gradients match eager mode's."""
    from torch._inductor import config

    block, _, compiled, grads = upblock_case()
    assert install_compile_check(compiled, "up_block")
    with config.patch(max_fusion_size=config.max_fusion_size):  # restored after the test
        compiled_grads = grads(compiled)  # the first call runs the check (and the fallback if needed)
        eager_grads = grads(block)
    assert ((compiled_grads - eager_grads).norm() / eager_grads.norm()).item() < 1e-4
