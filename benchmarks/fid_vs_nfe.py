"""Quality per network evaluation: digits-FID of every scheduler (ours and diffusers') against the NFE budget,
on one trained pipeline, with the same seeds for every run.

    python benchmarks/fid_vs_nfe.py --pipeline runs/ddpm-digits --num_samples 1000

Writes a markdown table and a PNG plot (benchmarks/results/fid_vs_nfe.{md,png}) and prints the smallest NFE at
which each scheduler matches stock DDIM with 50 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from custom_pipelines import (
    DDIMEtaScheduler,
    DDPMAncestralScheduler,
    DPMSolver2MScheduler,
    load_pipeline,
    optimize_timesteps,
)
from custom_pipelines.evaluation import build_feature_extractor, evaluate_pipeline, reference_features

# name -> (class, from_config overrides); few-step solvers use trailing spacing (start at t = T-1). The multistep
# solvers predict x0 without the DDPM config's clip_sample: in pixel space they need dynamic thresholding, as
# diffusers recommends, or the x0 estimate at t = T-1 (divided by α ≈ 0.005 on the cosine schedule) ruins samples.
PIXEL = {"timestep_spacing": "trailing", "thresholding": True}
OPTIMIZED = "optimized timesteps"  # rows whose name holds this sample with optimize_timesteps' schedule for each NFE
SCHEDULERS = {
    f"ours DPMSolver2M, {OPTIMIZED}": (DPMSolver2MScheduler, PIXEL),
    f"ours DDIMEta (η=0), {OPTIMIZED}": (DDIMEtaScheduler, {"timestep_spacing": "trailing"}),
    "ours DPMSolver2M": (DPMSolver2MScheduler, PIXEL),
    "ours DDIMEta (η=0)": (DDIMEtaScheduler, {"timestep_spacing": "trailing"}),
    "ours DDPMAncestral": (DDPMAncestralScheduler, {"timestep_spacing": "trailing"}),
    "diffusers DPMSolverMultistep++ 2M": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **PIXEL},
    ),
    "diffusers DPMSolverMultistep++ 3M": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 3, **PIXEL},
    ),
    "diffusers DPMSolverMultistep SDE-DPM++ 2M": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **PIXEL},
    ),
    "diffusers UniPC": (UniPCMultistepScheduler, PIXEL),
    "diffusers DDIM (η=0)": (DDIMScheduler, {"timestep_spacing": "trailing"}),
    "diffusers DDPM": (DDPMScheduler, {"timestep_spacing": "trailing"}),
    "diffusers Euler": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", default="runs/ddpm-digits")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10, 15, 20, 50])
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS))
    parser.add_argument("--bf16", action="store_true", help="UNet in bf16 (scheduler state stays fp32)")
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--merge", action="store_true", help="update the schedulers run now in the saved JSON")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the saved JSON")
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.results_dir)

    pipe = load_pipeline(args.pipeline, torch_dtype=torch.bfloat16 if args.bf16 else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    resolution = pipe.unet.config.sample_size
    extractor = build_feature_extractor("digits", resolution=resolution)
    real = reference_features("digits", extractor, resolution)

    results: dict[str, dict[int, float]] = {}
    schedules = None
    for name in args.schedulers:
        cls, overrides = SCHEDULERS[name]
        pipe.scheduler = cls.from_config(base_config, **overrides)
        if OPTIMIZED in name and schedules is None:
            # teacher noise from seed 1; the evaluation below samples from seed 0
            start = time.perf_counter()
            schedules = optimize_timesteps(pipe, args.nfe, num_samples=256, batch_size=256, seed=1)
            print(f"optimize_timesteps ({time.perf_counter() - start:.0f} s): {schedules}", flush=True)
        results[name] = {}
        for nfe in args.nfe:
            start = time.perf_counter()
            steps = {"timesteps": schedules[nfe]} if OPTIMIZED in name else {"num_inference_steps": nfe}
            metrics = evaluate_pipeline(
                pipe, args.num_samples, real, extractor, batch_size=250, kid_subsets=20, **steps
            )
            results[name][nfe] = metrics["fid"]
            print(
                f"{name:36s} NFE {nfe:3d}: FID {metrics['fid']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True
            )

    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, "fid_vs_nfe.json")
    if args.merge and os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            saved = {name: {int(n): v for n, v in row.items()} for name, row in json.load(f).items()}
        results = {**saved, **results}
    target = results.get("diffusers DDIM (η=0)", {}).get(50)
    lines = [
        f"digits-FID (digits classifier features, {args.num_samples} samples vs 1797 real digits) of `{args.pipeline}`"
        + (", UNet in bf16" if args.bf16 else ""),
        "",
        "| scheduler | " + " | ".join(f"NFE {n}" for n in args.nfe) + " | NFE to match DDIM-50 |",
        "|---" * (len(args.nfe) + 2) + "|",
    ]
    for name, row in results.items():
        match = next((n for n in sorted(row) if target is not None and row[n] <= target), None)
        cells = " | ".join(f"{row[n]:.2f}" for n in args.nfe)
        lines.append(f"| {name} | {cells} | {match if match is not None else '> ' + str(max(args.nfe))} |")
    table = "\n".join(lines)
    print("\n" + table)
    if schedules is not None:
        table += "\n\nOptimized timesteps (optimize_timesteps, 256 teacher trajectories from seed 1, grid 200):\n\n"
        table += "\n".join(f"- NFE {n}: {' '.join(map(str, ts))}" for n, ts in schedules.items())
    with open(os.path.join(args.results_dir, "fid_vs_nfe.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)

    plot(results, target, args.nfe, os.path.join(args.results_dir, "fid_vs_nfe.png"))


def plot(results: dict[str, dict[int, float]], target: float | None, nfe: list[int], path: str) -> None:
    """One line per scheduler (ours solid, diffusers' dashed); rows that never get below FID 10 (solvers that need
    clipping they do not have) are left out of the plot and named in its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>pPX*h"
    off_scale = []
    for k, (name, row) in enumerate(results.items()):
        if min(row.values()) > 10:
            off_scale.append(name)
            continue
        optimized = OPTIMIZED in name
        ax.plot(
            list(row), list(row.values()), marker=markers[k % len(markers)], color=colors[(2 * k) % 20 + k // 10],
            ls="-" if name.startswith("ours") else "--", lw=2.5 if optimized else 1.2, label=name,
        )  # fmt: skip
    if target is not None:
        ax.axhline(target, color="black", lw=0.8, ls=":", label="diffusers DDIM, 50 steps")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="digits-FID (lower is better)")
    ax.set_xticks(nfe, [str(n) for n in nfe])
    ax.minorticks_off()
    shown = [v for name, row in results.items() if name not in off_scale for v in row.values()]
    yticks = [y for y in (0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10) if min(shown) / 1.5 <= y <= max(shown) * 1.5]
    ax.set_yticks(yticks, [f"{y:g}" for y in yticks])
    if off_scale:
        ax.set_title(f"not shown (FID > 10 at every NFE): {', '.join(off_scale)}", fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def replot(results_dir: str = "benchmarks/results") -> None:
    """Redraw the PNG from the saved JSON (no sampling)."""
    with open(os.path.join(results_dir, "fid_vs_nfe.json"), encoding="utf-8") as f:
        results = {name: {int(n): v for n, v in row.items()} for name, row in json.load(f).items()}
    nfe = sorted({n for row in results.values() for n in row})
    plot(results, results.get("diffusers DDIM (η=0)", {}).get(50), nfe, os.path.join(results_dir, "fid_vs_nfe.png"))


if __name__ == "__main__":
    main()
