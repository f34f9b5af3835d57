"""Training step of the demo UNet by thread count, precision and attention backend, interleaved in one process.

    python benchmarks/step_threads_precision.py [--batch_size 32] [--rounds 4] [--steps 10]

The digits UNet (`hub_configs/ddpm-digits-16`) forward + backward + fused AdamW on a random batch; every variant
runs `--steps` steps per round, rounds interleaved so that a machine whose speed drifts affects all of them alike;
prints the CPU kind and the median ms per step. Run it under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`
to see the AVX2 kind on an AVX-512 machine (skip the bf16 rows there with `--no-bf16`: they run on reference
kernels, hundreds of times slower).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DModel

from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.attention import set_attention_backend


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = parser.parse_args()

    torch.manual_seed(0)
    unet = UNet2DModel.from_config(load_component_config("ddpm-digits-16", "unet"))
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)
    x = torch.randn(args.batch_size, 1, 16, 16)
    t = torch.randint(0, 1000, (args.batch_size,))
    threads = torch.get_num_threads()

    variants = {f"fp32, {n} thread(s), sdpa": (n, False, "sdpa") for n in sorted({1, threads})}
    variants[f"fp32, {threads} thread(s), math attention"] = (threads, False, "math")
    if args.bf16:
        variants[f"bf16 autocast, {threads} thread(s), sdpa"] = (threads, True, "sdpa")
        variants[f"bf16 autocast, {threads} thread(s), math attention (auto's bf16 path)"] = (threads, True, "math")

    def step(n: int, bf16: bool, backend: str) -> None:
        torch.set_num_threads(n)
        set_attention_backend(unet, backend)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(x, t).sample
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            step(*variant)  # warm-up outside the timed steps
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*variant)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)

    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"mkldnn bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, batch {args.batch_size}")  # fmt: skip
    for name, values in times.items():
        print(f"{name:60s} {statistics.median(values):7.1f} ms/step  (rounds {min(values):.0f}-{max(values):.0f})")


if __name__ == "__main__":
    main()
