"""Peak memory and step time of a training step with and without `--gradient_checkpointing`, on this CPU.

    python benchmarks/gradient_checkpointing.py --model_config ddpm-cifar10-32 --batch_size 32 --steps 4

Each mode runs in its own process (peak RSS is per process): the UNet of the variant, fp32, a forward + backward +
AdamW step on random 32×32 inputs, `--steps` timed steps after one warm-up; the peak RSS is read after the run
(`resource.getrusage`), and the model + optimizer state is the same in both, so the difference is the activations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def one_mode(model_config: str, batch_size: int, steps: int, checkpointing: bool) -> dict:
    import torch
    from diffusers import UNet2DModel

    from custom_pipelines.hub.configs import load_component_config
    from custom_pipelines.training.trainer import enable_gradient_checkpointing

    torch.manual_seed(0)
    config = load_component_config(model_config, "unet")
    unet = UNet2DModel.from_config(config).train()
    if checkpointing:
        enable_gradient_checkpointing({"unet": unet})
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)
    size, channels = config["sample_size"], config["in_channels"]
    x, t = torch.randn(batch_size, channels, size, size), torch.randint(0, 1000, (batch_size,))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = unet(x, t).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates and warms up
            times.append(time.perf_counter() - start)
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": statistics.median(times)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_config", default="ddpm-cifar10-32")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mode", choices=["plain", "checkpointed"], default=None, help="(internal) one mode")
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(one_mode(args.model_config, args.batch_size, args.steps, args.mode == "checkpointed")))
        return
    rows = {}
    for mode in ("plain", "checkpointed"):
        cmd = [sys.executable, __file__, "--model_config", args.model_config, "--batch_size", str(args.batch_size),
               "--steps", str(args.steps), "--mode", mode]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    cpu = f"{platform.processor() or platform.machine()}, {capability}, {os.cpu_count()} cores"
    print(f"| mode | peak RSS | step |   ({args.model_config} UNet, batch {args.batch_size}, fp32, {cpu})")
    print("|---|---|---|")
    for mode, row in rows.items():
        print(f"| {mode} | {row['peak_rss_mib']:.0f} MiB | {row['step_s']:.2f} s |")


if __name__ == "__main__":
    main()
