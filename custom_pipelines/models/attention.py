"""Choose how diffusers' `Attention` layers compute softmax(QKᵀ/√d)V: one fused SDPA call or plain matmuls."""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

AttentionBackend = Literal["auto", "sdpa", "math"]
ATTENTION_BACKENDS = ("auto", "sdpa", "math")


def resolve_attention_backend(backend: str, device: torch.device | str) -> str:
    """`"auto"` → `"math"` on CPU, `"sdpa"` elsewhere.

    Why: the image UNets here attend over few tokens (8×8 = 64 at 16×16 input). On CPU, PyTorch's SDPA picks its
    flash-attention kernel, whose bf16 backward is slow at that size: measured on the digits UNet (batch 64,
    bf16 autocast, 1 thread) the 4 attention layers' backward took 27 ms per training step with SDPA against
    4 ms with plain bmm + softmax, and the whole step 236 → 208 ms. On CUDA, SDPA's fused kernels win."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "math" if torch.device(device).type == "cpu" else "sdpa"


def set_attention_backend(model: torch.nn.Module, backend: AttentionBackend, device=None) -> str:
    """Give every diffusers `Attention` layer in `model` diffusers' `AttnProcessor2_0` (`"sdpa"`) or `AttnProcessor`
    (`"math"`); `"auto"` picks by `device` (default: the model's). Same results up to float rounding; weights and
    config are untouched. Returns the backend used."""
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
    backend = resolve_attention_backend(backend, device)
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor() if backend == "math" else AttnProcessor2_0())
    return backend
