"""Where the time of a training step and of a sampling step goes, ours next to stock, on this CPU.

    python benchmarks/profile_step.py                 # markdown tables; --json PATH writes them too

Same digits UNet (hub_configs/ddpm-digits-16), batch 64, the steps of `bench_ddpm.py`. torch.profiler's self CPU
time per aten op, grouped (convolution forward/backward, matmul, normalization, elementwise, optimizer, rest);
the convolutions' GFLOP (FlopCounterMode) give their achieved GFLOP/s against this run's matmul peak. It answers
"how far is a step from what this CPU can do", which says whether a faster loop is still to be had.
"""

from __future__ import annotations

import argparse
import copy
import platform
from collections import defaultdict

import torch
from bench_ddpm import FUSED, digits_batch, matmul_peak_gflops, our_train_step, stock_train_step
from diffusers import DDPMScheduler, UNet2DModel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from custom_pipelines import DDPMAncestralScheduler
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.io import write_json
from custom_pipelines.models import set_attention_backend
from custom_pipelines.precision import cpu_capability, resolve_mixed_precision

GROUPS = (  # first match wins; names are aten op names
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("conv", "mkldnn_convolution")),
    ("matmul (linear, attention)", ("addmm", "mm", "bmm", "matmul", "linear", "baddbmm", "_scaled_dot", "flash")),
    ("group norm (fwd + bwd)", ("group_norm", "native_group_norm")),
    ("optimizer (fused AdamW / Adam)", ("_fused_adam", "adam", "_foreach")),
    ("elementwise (silu, add, mul, copy, ...)", ("silu", "add", "mul", "copy", "sub", "div", "sigmoid", "fill", "zero",
                                                 "cat", "clone", "to", "where", "neg", "pow", "sum", "mean", "sqrt")),
)  # fmt: skip


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "rest (indexing, views, python, allocator)"


def profile_ms(fn, steps: int) -> tuple[float, dict[str, float]]:
    """(ms per call, self CPU ms per call by group), after one warm-up call."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    by_group: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_group[group_of(event.key.removeprefix("aten::"))] += event.self_cpu_time_total / 1e3 / steps
    return sum(by_group.values()), dict(by_group)


def conv_gflop(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k)) / 1e9


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = load_component_config("ddpm-digits-16", "unet")
    clean = digits_batch(args.batch_size, config["sample_size"])
    choice = resolve_mixed_precision("auto", torch.device("cpu"))
    autocast = torch.bfloat16 if choice.mixed_precision == "bf16" else None
    kind = f"{platform.machine()}, capability {cpu_capability()}, {torch.get_num_threads()} threads"
    print(f"CPU: {kind}; ours runs `auto` = {choice.mixed_precision} ({choice.reason})\n")

    base = UNet2DModel.from_config(config)
    stock_unet, our_unet = copy.deepcopy(base), copy.deepcopy(base)
    set_attention_backend(our_unet, "math" if autocast is not None else "sdpa")
    stock_sched = DDPMScheduler(num_train_timesteps=1000)
    our_sched = DDPMAncestralScheduler.from_config(
        load_component_config("ddpm-digits-16", "scheduler", "scheduler_config.json")
    )
    stock_opt = torch.optim.AdamW(stock_unet.parameters(), lr=1e-4)
    our_opt = torch.optim.AdamW(our_unet.parameters(), lr=1e-4, **FUSED)
    variants = {
        "stock train step (fp32)": lambda: stock_train_step(stock_unet, stock_opt, stock_sched, clean),
        f"our train step ({choice.mixed_precision})": lambda: our_train_step(
            our_unet, our_opt, our_sched, clean, autocast
        ),
    }
    t = torch.full((clean.shape[0],), 500)
    sample_dtype = torch.bfloat16 if autocast is not None else torch.float32
    sample_unet = copy.deepcopy(base).eval().to(sample_dtype)
    set_attention_backend(sample_unet, "sdpa")
    variants[f"sampling: one UNet evaluation ({str(sample_dtype).split('.')[-1]})"] = lambda: _forward(
        sample_unet, clean.to(sample_dtype), t
    )
    results = {"cpu": kind, "auto": choice.mixed_precision}
    for name, fn in variants.items():
        total, groups = profile_ms(fn, args.steps)
        this_peak = matmul_peak_gflops(torch.float32 if "fp32" in name else sample_dtype, n=1024)  # just after
        gflop = conv_gflop(fn)
        conv_ms = groups.get("convolution forward", 0) + groups.get("convolution backward", 0)
        results[name] = {
            "ms": total,
            "groups_ms": groups,
            "conv_gflop": gflop,
            "conv_gflops_per_s": gflop / conv_ms * 1e3,
            "matmul_peak_gflops": this_peak,
        }
        print(f"| {name} | self CPU ms | share |\n|---|---|---|")
        for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"| {group} | {ms:.1f} | {ms / total:.0%} |")
        print(f"| **total** | **{total:.1f}** | |")
        print(
            f"\nconvolutions: {gflop:.1f} GFLOP in {conv_ms:.1f} ms = {gflop / conv_ms * 1e3:.0f} GFLOP/s, "
            f"{gflop / conv_ms * 1e3 / this_peak:.0%} of this run's 1024² matmul peak ({this_peak:.0f} GFLOP/s); "
            f"everything else {total - conv_ms:.1f} ms\n"
        )
    if args.json:
        write_json(args.json, results)
    return results


@torch.no_grad()
def _forward(unet, sample, t):
    return unet(sample, t).sample


if __name__ == "__main__":
    main()
