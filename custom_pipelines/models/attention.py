"""Choose how diffusers' `Attention` layers compute softmax(QKᵀ/√d)V: one fused SDPA call or plain matmuls."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from ..options import ATTENTION_BACKENDS, AttentionBackend


def resolve_attention_backend(
    backend: str, device: torch.device | str, dtype: torch.dtype | None = torch.float32
) -> str:
    """`"auto"` → `"math"` for bf16/fp16 compute on CPU, `"sdpa"` otherwise: SDPA's CPU bf16 kernel is slow at the
    few tokens our UNets attend over (docs/performance.md, "Attention kernel")."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    low_precision = dtype in (torch.bfloat16, torch.float16)
    return "math" if torch.device(device).type == "cpu" and low_precision else "sdpa"


def set_attention_backend(model: torch.nn.Module, backend: AttentionBackend, device=None, dtype=None) -> str:
    """Give every diffusers `Attention` layer in `model` diffusers' `AttnProcessor2_0` (`"sdpa"`) or `AttnProcessor`
    (`"math"`); `"auto"` picks by `device` and compute `dtype` (default: the model's). Same results up to float
    rounding; weights and config are untouched. Returns the backend used."""
    parameter = next(model.parameters(), None)
    if device is None:
        device = parameter.device if parameter is not None else "cpu"
    if dtype is None:
        dtype = parameter.dtype if parameter is not None else torch.float32
    backend = resolve_attention_backend(backend, device, dtype)
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor() if backend == "math" else AttnProcessor2_0())
    return backend
