"""`enable_fast_sampling(pipe)`: put a loaded pipeline on its fast sampling path in one call (the precision and
attention kernel that suit its device, optionally `torch.compile`). What each setting buys, measured: see
docs/performance.md ("Sampling")."""

from __future__ import annotations

import torch

from ..models.attention import ATTENTION_BACKENDS, set_attention_backend
from ..precision import resolve_torch_dtype


def enable_fast_sampling(
    pipe,
    torch_dtype: torch.dtype | str | None = "auto",
    compile: bool = False,
    attention_backend: str = "auto",
    channels_last: bool = False,
    compile_mode: str | None = None,
):
    """Cast, pick the attention kernel for, and optionally compile every network of `pipe`, in place.

    Args:
        pipe: any of our pipelines (or a diffusers one): every `torch.nn.Module` component is treated.
        torch_dtype (`torch.dtype` or `str`, defaults to `"auto"`): weights' dtype: `"auto"` (bf16 where the
            pipeline's device runs it natively, else fp32), `"fp32"`, `"bf16"`, `"fp16"` or the torch dtype; None
            leaves it. An explicit bf16 on a device without native bf16 warns once. Scheduler state stays float32.
        compile (`bool`, defaults to False): `torch.compile` the networks (in place; first call compiles).
        attention_backend (`str`, defaults to `"auto"`): `"auto"`, `"sdpa"` or `"math"`, for diffusers'
            `Attention` layers (see `set_attention_backend`).
        channels_last (`bool`, defaults to False): NHWC weights (a GPU option; slower on CPU).
        compile_mode (`str`, *optional*): `mode` for `torch.compile`, e.g. `"max-autotune-no-cudagraphs"`.

    Returns:
        The same pipeline, for chaining.
    """
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {attention_backend!r}")
    for name, flag in (("compile", compile), ("channels_last", channels_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if not modules:
        raise ValueError(f"{type(pipe).__name__} has no torch.nn.Module component to speed up")
    dtype = resolve_torch_dtype(torch_dtype, _device_of(modules))
    for module in modules:
        if dtype is not None:
            _cast(module, dtype)
        set_attention_backend(module, attention_backend)
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile:
            module.compile(mode=compile_mode)
    return pipe


def _device_of(modules: list[torch.nn.Module]) -> torch.device:
    for module in modules:
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast like `from_pretrained(torch_dtype=...)`: submodules a diffusers model lists in `_keep_in_fp32_modules`
    stay float32. (`ModelMixin.to(dtype)` itself warns on every call, even when that list is empty.)"""
    torch.nn.Module.to(module, dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if keep and dtype != torch.float32:
        for name, submodule in module.named_modules():
            if any(k in name.split(".") for k in keep):
                torch.nn.Module.to(submodule, dtype=torch.float32)


def apply_fast_sampling_args(pipe, args) -> torch.dtype:
    """Apply `--torch_dtype` / `--compile`; returns the dtype used. fp32 without compile leaves the pipeline
    exactly as loaded."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    dtype = resolve_torch_dtype(args.torch_dtype, _device_of(modules))
    if dtype != torch.float32 or args.compile:
        enable_fast_sampling(pipe, torch_dtype=dtype, compile=args.compile)
    return dtype
