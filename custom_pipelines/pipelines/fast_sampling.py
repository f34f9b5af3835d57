"""One call that puts a loaded pipeline on its fast sampling path: low-precision networks, the attention kernel
that suits the device, and optionally `torch.compile`.

    pipe = load_pipeline("runs/ddpm-digits")
    enable_fast_sampling(pipe, torch_dtype=torch.bfloat16, compile=True)
    images = pipe(batch_size=64, num_inference_steps=8).images

What it changes and why (measured in `benchmarks/RESULTS.md`, digits UNet, batch 64, CPU):
- `torch_dtype`: the networks' weights are cast (what `from_pretrained(torch_dtype=...)` does); our pipelines keep
  the scheduler state x_t in float32 and cast only the network input, so a bf16 UNet keeps the fp32 digits-FID
  (DDIM-50 on the demo model, same seeds: 0.499 → 0.525, 0.300 → 0.297, 0.336 → 0.351; seed sets alone move it by
  0.2) at ≈ 0.6–0.7× the seconds per network evaluation.
- `attention_backend`: `"auto"` gives diffusers' plain matmul attention on CPU and SDPA elsewhere
  (see `custom_pipelines.models.attention`).
- `compile`: `module.compile()` in place (module class, `config` and `state_dict` keys stay the same, so
  `save_pretrained` still writes the plain weights). The first call pays the compilation (15–40 s on CPU for the
  digits UNet); afterwards bf16 + compile runs at 0.42–0.51× (four runs, median ≈ 0.45) the stock fp32
  pipeline's time per evaluation. Worth it for evaluation runs and services, not for one grid.
- `channels_last`: NHWC weights. Helps tensor-core convolutions on GPU; on CPU eager it is a loss (PyTorch's CPU
  GroupNorm is ≈ 6× slower in that layout), so it is off by default.
"""

from __future__ import annotations

import torch

from ..models.attention import ATTENTION_BACKENDS, set_attention_backend

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
SAMPLING_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def parse_torch_dtype(torch_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`torch.bfloat16`, `"bf16"`, `"bfloat16"`, ... → the dtype; None stays None."""
    if torch_dtype is None or (isinstance(torch_dtype, torch.dtype) and torch_dtype in SAMPLING_DTYPES):
        return torch_dtype
    if isinstance(torch_dtype, str) and torch_dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[torch_dtype.lower()]
    raise ValueError(
        f"torch_dtype must be one of {sorted(DTYPE_NAMES)} or the matching torch dtype, got {torch_dtype!r}"
    )


def enable_fast_sampling(
    pipe,
    torch_dtype: torch.dtype | str | None = torch.bfloat16,
    compile: bool = False,
    attention_backend: str = "auto",
    channels_last: bool = False,
    compile_mode: str | None = None,
):
    """Cast, pick the attention kernel for, and optionally compile every network of `pipe`, in place.

    Args:
        pipe: any of our pipelines (or a diffusers one): every `torch.nn.Module` component is treated.
        torch_dtype (`torch.dtype` or `str`, defaults to `torch.bfloat16`): weights' dtype (`"fp32"`, `"bf16"`,
            `"fp16"` or the torch dtype); None leaves it. Scheduler state stays float32 in our pipelines.
        compile (`bool`, defaults to False): `torch.compile` the networks (in place; first call compiles).
        attention_backend (`str`, defaults to `"auto"`): `"auto"`, `"sdpa"` or `"math"`, for diffusers'
            `Attention` layers (see `set_attention_backend`).
        channels_last (`bool`, defaults to False): NHWC weights (a GPU option; slower on CPU eager).
        compile_mode (`str`, *optional*): `mode` for `torch.compile`, e.g. `"max-autotune-no-cudagraphs"`.

    Returns:
        The same pipeline, for chaining.
    """
    dtype = parse_torch_dtype(torch_dtype)
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {attention_backend!r}")
    for name, flag in (("compile", compile), ("channels_last", channels_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if not modules:
        raise ValueError(f"{type(pipe).__name__} has no torch.nn.Module component to speed up")
    for module in modules:
        if dtype is not None:
            _cast(module, dtype)
        set_attention_backend(module, attention_backend)
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile:
            module.compile(mode=compile_mode)
    return pipe


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast like `from_pretrained(torch_dtype=...)`: submodules a diffusers model lists in `_keep_in_fp32_modules`
    stay float32. (`ModelMixin.to(dtype)` itself warns on every call, even when that list is empty.)"""
    torch.nn.Module.to(module, dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if keep and dtype != torch.float32:
        for name, submodule in module.named_modules():
            if any(k in name.split(".") for k in keep):
                torch.nn.Module.to(submodule, dtype=torch.float32)


def add_fast_sampling_args(parser) -> None:
    """`--torch_dtype` and `--compile` for the sampling command lines (`training.sample`, `evaluate`)."""
    parser.add_argument(
        "--torch_dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="dtype of the networks (scheduler state stays fp32); bf16 ≈ 0.6× the time per step on CPU",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (first batch compiles)")


def apply_fast_sampling_args(pipe, args) -> None:
    """Apply `--torch_dtype` / `--compile` (fp32 without compile leaves the pipeline exactly as loaded)."""
    if args.torch_dtype != "fp32" or args.compile:
        enable_fast_sampling(pipe, torch_dtype=args.torch_dtype, compile=args.compile)
