"""The GPU side of the portable-speed work in one run: what `auto` picks on this device, whether the compiled
training step's gradients are right there, and our training step and sampling next to stock diffusers.

    python benchmarks/cuda_check.py --out DIR          # markdown on stdout, DIR/cuda_check.json
    python benchmarks/cuda_check.py --device cpu --configs ddpm-tiny-8 --batch_sizes 8 --rounds 1   # a dry run

Per UNet config (default: the digits UNet and the CIFAR-10 one, at GPU-sized batches): the stock
`train_unconditional.py` step in fp32 against ours with the `auto` defaults (bf16 autocast on sm80+, SDPA, fused
AdamW) and with the checked `torch.compile`; sampling with stock `DDPMPipeline` (fp32) against
`enable_fast_sampling(pipe)` (auto dtype) and `enable_fast_sampling(pipe, compile=True)`, plus how far the bf16
samples land from the fp32 ones from the same noise. Variants run in interleaved rounds, medians reported; the
steps are those of `bench_ddpm.py`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from bench_ddpm import FUSED, digits_batch, matmul_peak_gflops, our_train_step, stock_train_step, time_it
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from custom_pipelines import DDPMAncestralScheduler, UnconditionalDiffusionPipeline, enable_fast_sampling
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models import set_attention_backend
from custom_pipelines.models.attention import resolve_attention_backend
from custom_pipelines.precision import resolve_mixed_precision
from custom_pipelines.training.compile_check import install_compile_check


def describe(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
    choice = resolve_mixed_precision("auto", device)
    info.update(auto=choice.mixed_precision, auto_reason=choice.reason)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        if device.type == "cuda" or dtype == torch.float32:
            info[f"matmul_tflops_{str(dtype).split('.')[-1]}"] = matmul_peak_gflops(dtype, 4096, 10, device) / 1e3
    return info


def training_rows(config: str, batch_size: int, device: torch.device, rounds: int, steps: int, compile_: bool):
    unet_config = load_component_config(config, "unet")
    sched_config = load_component_config(config, "scheduler", "scheduler_config.json")
    torch.manual_seed(0)
    base = UNet2DModel.from_config(unet_config).to(device)
    clean = batch_of(unet_config, batch_size).to(device)
    stock_sched, our_sched = DDPMScheduler.from_config(sched_config), DDPMAncestralScheduler.from_config(sched_config)
    choice = resolve_mixed_precision("auto", device)
    dtype = choice.torch_dtype if choice.mixed_precision != "no" else None
    attention = resolve_attention_backend("auto", device, choice.torch_dtype)
    variants, notes = {}, {}

    def add(name, step, backend, compiled=False):
        unet = copy.deepcopy(base).train()
        set_attention_backend(unet, backend)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, **FUSED)
        model = torch.compile(unet) if compiled else unet
        if compiled:
            install_compile_check(model, "unet", low_precision=dtype is not None)  # as the trainer does
            start = time.perf_counter()
            try:
                step(model, opt)
            except Exception as err:  # off CPU a gradient mismatch stops the trainer: record it, time the rest
                notes[f"{config}: compiled training refused"] = f"{type(err).__name__}: {err}"[:2000]
                return
            notes[f"{config}: compile + gradient check (s)"] = time.perf_counter() - start
        variants[name] = lambda: step(model, opt)

    add("stock loop (fp32, SDPA)", lambda u, o: stock_train_step(u, o, stock_sched, clean), "sdpa")
    ours = lambda u, o: our_train_step(u, o, our_sched, clean, dtype)  # noqa: E731
    add(f"ours, auto ({choice.mixed_precision}, {attention})", ours, attention)
    if compile_:
        add("ours, auto + torch.compile", ours, attention, compiled=True)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(time_it(fn, steps))
    return {name: statistics.median(t) for name, t in times.items()}, notes


def sampling_rows(config: str, batch_size: int, device: torch.device, rounds: int, steps: int, compile_: bool):
    unet_config = load_component_config(config, "unet")
    sched_config = load_component_config(config, "scheduler", "scheduler_config.json")
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(unet_config).eval().to(device)

    def ours():
        return UnconditionalDiffusionPipeline(
            unet=copy.deepcopy(unet), scheduler=DDPMAncestralScheduler.from_config(sched_config)
        )

    pipes = {"stock DDPMPipeline (fp32)": DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(sched_config))}
    pipes["ours, fp32"] = ours()
    fast = enable_fast_sampling(ours())
    fast_name = f"ours, enable_fast_sampling (auto: {str(fast.unet.dtype).split('.')[-1]})"
    pipes[fast_name] = fast
    notes = {}
    if compile_:
        pipes["ours, enable_fast_sampling(compile=True)"] = enable_fast_sampling(ours(), compile=True)
    calls = {}
    for name, pipe in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        calls[name] = lambda pipe=pipe: pipe(batch_size=batch_size, num_inference_steps=steps, output_type="pt",
                                             generator=torch.Generator(device).manual_seed(0)).images  # fmt: skip
    with torch.no_grad():
        if compile_:
            start = time.perf_counter()
            calls["ours, enable_fast_sampling(compile=True)"]()
            notes[f"{config}: sampling compile (s)"] = time.perf_counter() - start
        reference, fast_images = calls["ours, fp32"](), calls[fast_name]()
        notes[f"{config}: |auto-dtype samples - fp32 samples| max"] = (fast_images - reference).abs().max().item()
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, fn in calls.items():
                times[name].append(time_it(fn, 1) / steps)
    return {name: statistics.median(t) for name, t in times.items()}, notes


def batch_of(unet_config: dict, batch_size: int) -> torch.Tensor:
    """Real digits for one-channel configs, seeded noise in [-1, 1] otherwise (the speed does not depend on it)."""
    size, channels = unet_config["sample_size"], unet_config["in_channels"]
    if channels == 1:
        return digits_batch(batch_size, size)
    return torch.rand(batch_size, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["ddpm-digits-16", "ddpm-cifar10-32"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[256, 128], help="one per config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=10)
    parser.add_argument("--sample_steps", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for cuda_check.json")
    args = parser.parse_args(argv)
    if len(args.batch_sizes) != len(args.configs):
        raise ValueError(f"give one --batch_sizes entry per config, got {args.batch_sizes} for {args.configs}")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what a GPU user turns on; both sides get it
    report = {"machine": describe(device), "training": {}, "sampling": {}, "notes": {}}
    print(json.dumps(report["machine"], indent=1))
    for config, batch_size in zip(args.configs, args.batch_sizes):
        train, notes = training_rows(config, batch_size, device, args.rounds, args.train_steps, args.compile)
        sample, sample_notes = sampling_rows(config, batch_size, device, args.rounds, args.sample_steps, args.compile)
        report["training"][config], report["sampling"][config] = train, sample
        report["notes"].update(notes | sample_notes)
        print_table(f"{config}, training step, batch {batch_size}", "ms/step", train, "× stock speed", invert=True)
        print_table(f"{config}, sampling, batch {batch_size}", "ms per network evaluation", sample, "× stock time")
    print("\n" + "\n".join(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}"
                            for k, v in report["notes"].items()))  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cuda_check.json"), "w") as f:
        json.dump(report, f, indent=1)


def print_table(title: str, unit: str, seconds: dict[str, float], ratio: str, invert: bool = False) -> None:
    stock = next(iter(seconds.values()))
    print(f"\n| {title} | {unit} | {ratio} |\n|---|---|---|")
    for name, t in seconds.items():
        print(f"| {name} | {t * 1e3:.2f} | {(stock / t if invert else t / stock):.2f} |")


if __name__ == "__main__":
    main()
