"""Check that a `torch.compile`d model computes the same gradients as the eager one before training on it.

Why: PyTorch 2.13's CPU inductor miscompiles the backward of diffusers' `UpBlock2D` (the gradient through the
nearest upsampling comes out zero, and the layers below silently stop learning; docs/performance.md has the
finding and its numbers). `install_compile_check(model)` compares the first call's parameter gradients, compiled vs
eager, with the same inputs, projection, RNG and autocast, and restores everything afterwards. On a CPU mismatch it
recompiles once with inductor's fusion limited (`limit_inductor_fusion`) and checks again; otherwise it raises
`CompiledGradientMismatch`.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class CompiledGradientMismatch(ValueError):
    """The compiled model's gradients differ from eager mode's beyond tolerance (a ValueError, so the training
    scripts print it as an error message, without a traceback). `summary`: the finding without the advice."""

    def __init__(self, message: str, summary: str | None = None):
        super().__init__(message)
        self.summary = summary or message


def is_compiled(model: torch.nn.Module) -> bool:
    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule)


def _tensors(output) -> list[torch.Tensor]:
    """Every floating tensor in a model output (tensor, tuple/list, dict or diffusers `BaseOutput`)."""
    if torch.is_tensor(output):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _detached(value):
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _gradients(module, eager, args, kwargs, buffers, seed: int) -> list[torch.Tensor]:
    params = [p for p in eager.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    with torch.no_grad():
        for name, buffer in eager.named_buffers():
            buffer.copy_(buffers[name])
    device = params[0].device if params else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        outputs = _tensors(module(*args, **kwargs))
        if not outputs:
            raise CompiledGradientMismatch("the compiled model returned no floating-point tensor to check")
        generator = torch.Generator(device=device).manual_seed(seed)
        loss = sum(
            (out.float() * torch.randn(out.shape, generator=generator, device=device)).sum() / out.numel() ** 0.5
            for out in outputs
        )
        loss.backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def check_compiled_gradients(
    compiled: torch.nn.Module,
    args: tuple,
    kwargs: dict,
    name: str = "model",
    rtol: float | None = None,
    seed: int = 0,
    low_precision: bool = False,
) -> float:
    """Compare a compiled module's parameter gradients with its eager `_orig_mod` on these inputs.

    Returns the overall relative error ‖g_compiled − g_eager‖ / ‖g_eager‖. Raises `CompiledGradientMismatch` if it
    exceeds `rtol`, or if a parameter tensor whose eager gradient is not negligible (> 1e-3 of the total norm)
    gets a gradient norm 10× smaller (e.g. zero) or larger. Default `rtol`: 5e-2 under autocast or with
    `low_precision` (accelerate's mixed precision wraps the forward itself, so a caller cannot see it), else 1e-2
    (fp32 compiled and eager agree to ~1e-6 on CPU; TF32 matmuls on a GPU can differ by ~1e-3). In bf16 a correct
    compile of the digits UNet differs from eager bf16 by 2.2%, because fused kernels round at other places; the
    miscompiled one by 38–40%, with 60–62 parameter tensors 10× off or zero.
    Gradients, buffers and the RNG state are restored afterwards.
    """
    eager = compiled._orig_mod
    if isinstance(eager, torch.nn.parallel.DistributedDataParallel):
        eager = eager.module
    autocast = torch.is_autocast_enabled("cpu") or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda"))
    rtol = rtol if rtol is not None else (5e-2 if autocast or low_precision else 1e-2)
    named = [(n, p) for n, p in eager.named_parameters() if p.requires_grad]
    saved_grads = [p.grad for _, p in named]
    buffers = {n: b.detach().clone() for n, b in eager.named_buffers()}
    args, kwargs = _detached(args), _detached(kwargs)
    try:
        got = _gradients(compiled, eager, args, kwargs, buffers, seed)
        want = _gradients(eager, eager, args, kwargs, buffers, seed)
    finally:
        with torch.no_grad():
            for n, buffer in eager.named_buffers():
                buffer.copy_(buffers[n])
        for (_, p), grad in zip(named, saved_grads):
            p.grad = grad
    total = torch.sqrt(sum((w.double() ** 2).sum() for w in want))
    error = torch.sqrt(sum(((g.double() - w.double()) ** 2).sum() for g, w in zip(got, want)))
    relative = (error / total.clamp_min(1e-30)).item()
    bad = []  # tensors whose gradient vanished or blew up: a cut graph, not rounding
    for (param_name, _), g, w in zip(named, got, want):
        want_norm, got_norm = w.double().norm(), g.double().norm()
        if want_norm > 1e-3 * total and not 0.1 * want_norm <= got_norm <= 10 * want_norm:
            bad.append(
                (abs(torch.log10(got_norm / want_norm + 1e-30)).item(), param_name, got_norm.item(), want_norm.item())
            )
    logger.info(f"compile check of {name}: gradient relative error {relative:.2e} vs eager ({len(named)} tensors)")
    if relative > rtol or bad:
        bad.sort(reverse=True)
        worst = "; ".join(f"{n}: |compiled| {gn:.3g} vs |eager| {wn:.3g}" for _, n, gn, wn in bad[:5])
        summary = (
            f"torch.compile gives wrong gradients for {name!r}: relative error {relative:.3g} against eager "
            f"mode (tolerance {rtol:g}); {len(bad)} of {len(named)} parameter tensors get a gradient 10× too small "
            "or large" + (f", e.g. {worst}" if worst else "")
        )
        raise CompiledGradientMismatch(
            summary + ". Eager mode is the reference, so this is a compiler bug, not a problem of the model (PyTorch "
            "2.13's CPU inductor, for one, zeroes the gradient through diffusers' UpBlock2D upsampling): train "
            "without it (accelerate launch --dynamo_backend no), or pass --compile_check off to train anyway.",
            summary=summary,
        )
    return relative


def _on_cpu(module: torch.nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in module.parameters())


def limit_inductor_fusion() -> bool:
    """Set inductor's `max_fusion_size` to 1 and drop everything compiled so far, so the next calls recompile.

    The fallback when the check fails on CPU. With one operation per generated kernel, PyTorch 2.13 compiles the
    digits UNet correctly (gradients within 3e-6 of eager in fp32), and the bf16 training step still runs 8–14%
    faster than eager: on CPU most of the gain is the lower dispatch cost, not the fusion. Any limit above 1
    (2, 4, 8, 16, 64) still zeroes the gradients. Returns False (changing nothing) if the limit already is 1."""
    from torch._inductor import config

    if config.max_fusion_size <= 1:
        return False
    config.max_fusion_size = 1
    torch._dynamo.reset()
    return True


def install_compile_check(model: torch.nn.Module, name: str = "model", low_precision: bool = False) -> bool:
    """Run `check_compiled_gradients` on the first call of `model` if it is compiled; returns whether it was hooked."""
    if not is_compiled(model):
        return False
    state = {"done": False}

    def hook(module, args, kwargs):
        if state["done"] or not torch.is_grad_enabled():
            return None
        state["done"] = True
        handle.remove()
        try:
            check_compiled_gradients(module, args, kwargs, name=name, low_precision=low_precision)
        except CompiledGradientMismatch as error:
            if not _on_cpu(module) or not limit_inductor_fusion():
                raise
            logger.warning(
                f"{error.summary}. Recompiling every model with inductor's max_fusion_size=1 "
                "(one operation per generated kernel: this avoids the PyTorch 2.13 CPU bug) and checking again."
            )
            try:
                check_compiled_gradients(module, args, kwargs, name=name, low_precision=low_precision)
            except CompiledGradientMismatch as again:
                raise CompiledGradientMismatch(f"{again} Recompiling with max_fusion_size=1 did not help.") from None
        return None

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    return True
