"""The one place that decides the compute precision from what the device really does.

`"auto"` (the default of every training script, of `enable_fast_sampling` and of the sampling CLIs) means bf16
only where the device runs it natively, else fp32; fp16 is never chosen on its own:

- CUDA: bf16 on compute capability ≥ 8.0 (Ampere and later), where it runs on the tensor cores; older GPUs
  emulate it, so fp32 (fp16 stays an explicit choice there: it needs loss scaling).
- CPU: bf16 only with AVX-512-BF16 or AMX-BF16 instructions, confirmed once per process by a tiny timed matmul
  against fp32 (a false positive must not make things slower). Without them PyTorch's bf16 matmul and convolution
  fall back to reference kernels: measured on an AVX2-only EPYC, a 2048² bf16 matmul ran at 0.3 GFLOP/s against
  110 for fp32, and a training step of the digits UNet took 11× longer than in fp32.
- anything else: fp32.

An explicit `bf16` on a device without native support still works, but warns once with the measured slowdown.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from .options import MIXED_PRECISION_CHOICES

# bf16 must beat fp32 by this much on the probe to count as native (native CPUs give 2-3×, emulation 0.01-0.5×)
MIN_BF16_SPEEDUP = 1.2
_RECHECK_REPEATS = 25  # the second, longer probe when the first falls short on a CPU with bf16 instructions
_PROBE_SIZE = 256  # 34 MFLOP: ≈ 0.1-0.3 ms native, ≈ 10-100 ms on a reference kernel
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_warned: set[str] = set()


@dataclass(frozen=True)
class PrecisionChoice:
    """What `resolve_mixed_precision` decided: accelerate's name (`"no"`, `"fp16"`, `"bf16"`) and why."""

    mixed_precision: Literal["no", "fp16", "bf16"]
    requested: str
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.mixed_precision]


def cpu_capability() -> str:
    """A one-line description of the CPU's vector units, for logs and benchmark tables."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    bf16 = [name for name in ("avx512_bf16", "amx_bf16") if caps.get(name)]
    return f"{torch.backends.cpu.get_cpu_capability()}" + (f" + {'/'.join(bf16)}" if bf16 else " (no native bf16)")


def cpu_has_bf16_instructions() -> bool:
    """AVX-512-BF16 or AMX-BF16 present (what oneDNN needs for fast bf16 matmuls and convolutions)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _clock(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@functools.cache
def measure_bf16_speedup(device_type: str = "cpu", size: int = _PROBE_SIZE, repeats: int = 7) -> float:
    """fp32 time / bf16 time of a `size`² matmul on `device_type` (> 1: bf16 is faster). Once per process.

    The two are timed in turns, best of `repeats` each, so a burst of load from another process (a second rank, a
    parallel test worker) slows both alike instead of skewing the ratio; on one CPU thread, since a threaded
    kernel waits for its slowest thread and a loaded machine preempts one of them now and then."""
    device = torch.device(device_type)
    gen = torch.Generator().manual_seed(0)
    a32 = torch.randn(size, size, generator=gen).to(device)
    b32 = torch.randn(size, size, generator=gen).to(device)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def timed(a, b):
        def run():
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return run

    run32, run16 = timed(a32, b32), timed(a16, b16)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core's kernel speed: a threaded op stalls whenever one thread is preempted
    try:
        run32(), run16()  # warm-up: first calls pick and JIT the kernels
        t32 = t16 = float("inf")
        for turn in range(repeats):
            t32 = min(t32, _clock(run32))
            t16 = min(t16, _clock(run16))
            if turn >= 2 and t16 > 10 * t32:  # a reference kernel (≈ 0.1 s a turn on AVX2): the verdict is clear
                break
    finally:
        torch.set_num_threads(threads)
    return t32 / max(t16, 1e-9)


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether `device` runs bf16 natively, and the evidence in words."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return True, f"CUDA compute capability {major}.{minor} has bf16 tensor cores"
        return False, f"CUDA compute capability {major}.{minor} < 8.0 emulates bf16"
    if device.type == "cpu":
        if not cpu_has_bf16_instructions():
            return False, f"CPU {cpu_capability()}: bf16 runs on slow reference kernels"
        speedup = measure_bf16_speedup("cpu")
        if speedup < MIN_BF16_SPEEDUP:  # the instructions are there: make sure a loaded machine did not hide them
            speedup = max(speedup, measure_bf16_speedup("cpu", repeats=_RECHECK_REPEATS))
        if speedup < MIN_BF16_SPEEDUP:
            return False, (
                f"CPU {cpu_capability()}, but a bf16 matmul ran only {speedup:.2f}× the fp32 speed "
                f"(needs ≥ {MIN_BF16_SPEEDUP}×)"
            )
        return True, f"CPU {cpu_capability()}: bf16 matmul {speedup:.1f}× fp32"
    return False, f"no bf16 fast path known for device type {device.type!r}"


def resolve_mixed_precision(requested: str, device: torch.device | str) -> PrecisionChoice:
    """Turn `"auto"` / `"no"` / `"fp16"` / `"bf16"` into what to run on `device`, with the reason.

    `"auto"` → bf16 where native, else fp32 (`"no"`). `"bf16"` is kept even where it is slow, with a one-time
    warning naming the measured slowdown. `"fp16"` needs CUDA (CPU fp16 kernels are reference code)."""
    if requested not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {requested!r}")
    device = torch.device(device)
    if requested == "no":
        return PrecisionChoice("no", requested, "fp32 requested")
    if requested == "fp16":
        if device.type != "cuda":
            raise ValueError(f"mixed_precision fp16 needs a CUDA device (got {device.type}); use auto, bf16 or no")
        return PrecisionChoice("fp16", requested, "fp16 requested")
    native, evidence = native_bf16(device)
    if requested == "auto":
        return PrecisionChoice("bf16" if native else "no", requested, ("bf16: " if native else "fp32: ") + evidence)
    if requested == "bf16":
        if not native:
            _warn_slow_bf16(device, evidence)
        return PrecisionChoice("bf16", requested, "bf16 requested" + ("" if native else f" although {evidence}"))
    raise AssertionError(requested)  # unreachable: checked above


def _warn_slow_bf16(device: torch.device, evidence: str) -> None:
    if device.type in _warned:
        return
    _warned.add(device.type)
    slowdown = ""
    if device.type in ("cpu", "cuda"):
        slowdown = f"; measured here a bf16 matmul takes {1 / measure_bf16_speedup(device.type):.1f}× the fp32 time"
    warnings.warn(
        f"bf16 was asked for, but {evidence}{slowdown}. It will run, slowly: use 'auto' or fp32 (no) for speed.",
        UserWarning,
        stacklevel=3,
    )


SAMPLING_DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "no": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_SAMPLING_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_torch_dtype(torch_dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype | None:
    """The networks' dtype for sampling on `device`: `"auto"` → bf16 where native else fp32; names (`"bf16"`,
    `"float16"`, ...) and torch dtypes as given (explicit bf16 on a slow device warns once); None stays None."""
    if torch_dtype is None:
        return None
    if isinstance(torch_dtype, str) and torch_dtype.lower() == "auto":
        return resolve_mixed_precision("auto", device).torch_dtype
    if isinstance(torch_dtype, torch.dtype) and torch_dtype in _SAMPLING_DTYPES:
        dtype = torch_dtype
    elif isinstance(torch_dtype, str) and torch_dtype.lower() in SAMPLING_DTYPE_NAMES:
        dtype = SAMPLING_DTYPE_NAMES[torch_dtype.lower()]
    else:
        raise ValueError(
            f"torch_dtype must be 'auto', one of {sorted(SAMPLING_DTYPE_NAMES)} or the matching torch dtype, "
            f"got {torch_dtype!r}"
        )
    if dtype == torch.bfloat16:
        native, evidence = native_bf16(device)
        if not native:
            _warn_slow_bf16(torch.device(device), evidence)
    return dtype
