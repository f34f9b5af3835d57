"""The trainer's CPU levers, one by one, on this machine: attention kernel, AdamW kernel, channels_last (fp32).

    python benchmarks/cpu_levers.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_levers.py   # rehearse the AVX2 kind

Digits UNet (hub_configs/ddpm-digits-16), batch 64 of noise, ε-MSE step with gradient clipping; variants
interleaved in rounds, median ms per step. The table in benchmarks/RESULTS.md ("Two CPU kinds") comes from here.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models import set_attention_backend
from custom_pipelines.precision import cpu_capability

VARIANTS = {  # name: (attention, AdamW kwargs, channels_last)
    "SDPA attention, fused AdamW": ("sdpa", {"fused": True}, False),
    "matmul attention, fused AdamW": ("math", {"fused": True}, False),
    "matmul attention, foreach AdamW": ("math", {"foreach": True}, False),
    "matmul attention, fused AdamW, channels_last": ("math", {"fused": True}, True),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base = UNet2DModel.from_config(load_component_config("ddpm-digits-16", "unet"))
    scheduler = DDPMScheduler()
    x = torch.randn(64, 1, 16, 16)

    def step(unet, optimizer, channels_last):
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (x.shape[0],))
        noisy = scheduler.add_noise(x, noise, t)
        if channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        F.mse_loss(unet(noisy, t).sample, noise).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    runs = {}
    for name, (attention, adamw, channels_last) in VARIANTS.items():
        unet = copy.deepcopy(base).train()
        set_attention_backend(unet, attention)
        if channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, **adamw)
        runs[name] = lambda u=unet, o=optimizer, c=channels_last: step(u, o, c)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            fn()
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"CPU: {cpu_capability()}, {torch.get_num_threads()} threads\n\n| lever | ms/step |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.0f} |")


if __name__ == "__main__":
    main()
