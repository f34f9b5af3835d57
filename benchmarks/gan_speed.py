"""Generator images/s on the CPU: our StyleGANGenerator (fp32, bf16 autocast, bf16 weights) vs NVlabs'
stylegan2-ada-pytorch generator on its pure-PyTorch reference path, side by side in one process.

Setting (the same for every column): 32×32×1 images, z = w = 512, 8 mapping layers, channel_base 16384, channel_max
512 (our sizes come from `hub_configs/stylegan-ffhq-256` with the resolution and channels changed), batch 64,
truncation ψ = 0.7, constant noise, random weights, `torch.no_grad()`, one thread by default. The variants run
interleaved: every round calls each once (the order rotates from round to round), after one untimed warm-up call
each. Reported: the median over rounds of CPU time (`time.process_time`, so other jobs on the machine do not
distort it) and of wall time per batch, as images/s.

NVlabs' code is non-commercial: it is neither copied nor installed. Point `--nvlabs_path` at a checkout, e.g.

    git --git-dir=<mirror>/repo archive HEAD | tar -x -C /tmp/stylegan2-ada   # github.com/NVlabs/stylegan2-ada-pytorch
    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py --nvlabs_path /tmp/stylegan2-ada

Without a checkout the NVlabs columns are skipped with a message. On a CPU its `bias_act` / `upfirdn2d` ops take the
reference path by themselves (the CUDA plugins are only tried for CUDA tensors) and `conv2d_gradfix` is off. In eval
mode at fp32 it runs modulated convs as one grouped conv (`fused_modconv=True`); `fused_modconv=False` (modulate the
activations, plain conv, demodulate) is measured too, and the ratio is taken against the faster of the two.
NVlabs' generator is StyleGAN2 (weight demodulation, skip ToRGB at every resolution); ours is StyleGAN1 (AdaIN, one
ToRGB): the same sizes, not the same network.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from custom_pipelines.gan.stylegan import StyleGANGenerator
from custom_pipelines.hub.configs import load_component_config

Variant = Callable[[], torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nvlabs_path", default="/tmp/stylegan2-ada", help="checkout of NVlabs/stylegan2-ada-pytorch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--truncation_psi", type=float, default=0.7)
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_only", action="store_true", help="rewrite the markdown from gan_speed.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--rounds, --batch_size and --threads must be positive")
    return args


def build_ours() -> StyleGANGenerator:
    config = load_component_config("stylegan-ffhq-256", "stylegan")
    config.update(resolution=32, img_channels=1)
    return StyleGANGenerator.from_config(config).eval()


def load_nvlabs_networks(path: str):
    """NVlabs' `training/networks.py` as module `nvlabs_networks` (our own `training` package keeps its name)."""
    networks_file = os.path.join(path, "training", "networks.py")
    if not os.path.isfile(networks_file):
        return None
    sys.path.insert(0, path)  # for its `torch_utils` and `dnnlib`
    spec = importlib.util.spec_from_file_location("nvlabs_networks", networks_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["nvlabs_networks"] = module
    spec.loader.exec_module(module)
    return module


def build_nvlabs(networks) -> torch.nn.Module:
    return networks.Generator(
        z_dim=512, c_dim=0, w_dim=512, img_resolution=32, img_channels=1,
        mapping_kwargs={"num_layers": 8}, synthesis_kwargs={"channel_base": 16384, "channel_max": 512},
    ).eval()  # fmt: skip


def make_variants(args) -> tuple[dict[str, Variant], dict]:
    z = torch.randn(args.batch_size, 512, generator=torch.Generator().manual_seed(args.seed))
    psi = args.truncation_psi
    ours = build_ours()
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)

    def ours_bf16_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(z, truncation_psi=psi, noise_mode="const")

    variants = {
        "ours fp32": lambda: ours(z, truncation_psi=psi, noise_mode="const"),
        "ours bf16 autocast": ours_bf16_autocast,
        "ours bf16 weights": lambda: ours_bf16(z.to(torch.bfloat16), truncation_psi=psi, noise_mode="const"),
    }
    info = {"ours_parameters": sum(p.numel() for p in ours.parameters())}
    networks = load_nvlabs_networks(args.nvlabs_path)
    if networks is None:
        print(f"NVlabs checkout not found at {args.nvlabs_path!r}: skipping the NVlabs columns")
        return variants, info
    nvlabs = build_nvlabs(networks)

    def nvlabs_call(fused_modconv: bool) -> Variant:
        def call() -> torch.Tensor:
            ws = nvlabs.mapping(z, None, truncation_psi=psi)
            return nvlabs.synthesis(ws, noise_mode="const", fused_modconv=fused_modconv)

        return call

    variants["NVlabs ref fused_modconv"] = nvlabs_call(True)
    variants["NVlabs ref unfused"] = nvlabs_call(False)
    info["nvlabs_parameters"] = sum(p.numel() for p in nvlabs.parameters())
    return variants, info


def time_rounds(variants: dict[str, Variant], rounds: int) -> dict[str, dict[str, list[float]]]:
    times = {name: {"cpu": [], "wall": []} for name in variants}
    names = list(variants)
    with torch.no_grad():
        for name in names:  # warm-up: oneDNN primitives, allocator
            out = variants[name]()
            if out.shape[1:] != (1, 32, 32) or not torch.isfinite(out.float()).all():
                raise RuntimeError(f"{name} gave {tuple(out.shape)} / non-finite values")
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                cpu, wall = time.process_time(), time.perf_counter()
                variants[name]()
                times[name]["cpu"].append(time.process_time() - cpu)
                times[name]["wall"].append(time.perf_counter() - wall)
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n]['cpu'][-1]:.2f}s" for n in names))
    return times


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def summarize(times: dict, args) -> dict[str, dict[str, float]]:
    summary = {}
    for name, t in times.items():
        cpu, wall = statistics.median(t["cpu"]), statistics.median(t["wall"])
        summary[name] = {"cpu_s_per_batch": cpu, "wall_s_per_batch": wall}
        summary[name] |= {"img_per_cpu_s": args.batch_size / cpu, "img_per_wall_s": args.batch_size / wall}
    return summary


def write_markdown(summary: dict, info: dict, path: str) -> None:
    nvlabs = [n for n in summary if n.startswith("NVlabs")]
    # ratios against NVlabs' default eval path (fused_modconv) and against its fastest path on this CPU
    references = {"NVlabs default": nvlabs[0]} if nvlabs else {}
    if nvlabs:
        references["NVlabs fastest"] = max(nvlabs, key=lambda n: summary[n]["img_per_cpu_s"])
    lines = [
        f"CPU: {info['cpu']} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, {info['threads']} thread(s), "
        f"1-minute load average {info['loadavg_start']:.1f} at the start and {info['loadavg_end']:.1f} at the end "
        "(other jobs share the machine: CPU time is the measure, wall time is shown too). "
        f"Batch {info['batch_size']}, 32×32×1, z = w = 512, 8 mapping layers, channel_base 16384, channel_max 512, "
        f"ψ = {info['truncation_psi']}, const noise, median of {info['rounds']} interleaved rounds.",
        "",
        "| generator | img/s (CPU time) | img/s (wall) | s / batch (CPU) |"
        + "".join(f" ours / {label} ({ref}) |" for label, ref in references.items()),
        "|---|---:|---:|---:|" + "---:|" * len(references),
    ]
    for name, s in summary.items():
        ratios = "".join(
            f" {s['img_per_cpu_s'] / summary[ref]['img_per_cpu_s']:.2f}× |" for ref in references.values()
        )
        row = f"| {name} | {s['img_per_cpu_s']:.2f} | {s['img_per_wall_s']:.2f} | {s['cpu_s_per_batch']:.2f} |"
        lines.append(row + ratios)
    params = f"Parameters: ours {info['ours_parameters'] / 1e6:.1f}M"
    if "nvlabs_parameters" in info:
        params += f", NVlabs {info['nvlabs_parameters'] / 1e6:.1f}M (StyleGAN2: modulated convs, ToRGB per resolution)"
    else:
        params += "; NVlabs columns skipped (no checkout given)"
    lines += ["", params + "."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> dict:
    if args.report_only:  # rewrite gan_speed.md from gan_speed.json, measuring nothing
        with open(os.path.join(args.results_dir, "gan_speed.json"), encoding="utf-8") as f:
            record = json.load(f)
        write_markdown(record["summary"], record["info"], os.path.join(args.results_dir, "gan_speed.md"))
        return record["summary"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()[0]
    variants, info = make_variants(args)
    times = time_rounds(variants, args.rounds)
    info |= {"loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]}
    summary = summarize(times, args)
    info |= {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "batch_size": args.batch_size}
    info |= {"rounds": args.rounds, "truncation_psi": args.truncation_psi}
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "gan_speed.json"), "w", encoding="utf-8") as f:
        json.dump({"info": info, "summary": summary, "times": times}, f, indent=2)
    write_markdown(summary, info, os.path.join(args.results_dir, "gan_speed.md"))
    for name, s in summary.items():
        print(f"{name:28s} {s['img_per_cpu_s']:7.2f} img/s (CPU)  {s['img_per_wall_s']:7.2f} img/s (wall)")
    return summary


if __name__ == "__main__":
    main(parse_args())
