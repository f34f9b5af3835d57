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

from custom_pipelines import DDIMEtaScheduler, DDPMAncestralScheduler, DPMSolver2MScheduler, load_pipeline
from custom_pipelines.evaluation import build_feature_extractor, evaluate_pipeline, reference_features

# name -> (class, from_config overrides); few-step solvers use trailing spacing (start at t = T-1). The multistep
# solvers predict x0 without the DDPM config's clip_sample: in pixel space they need dynamic thresholding, as
# diffusers recommends, or the x0 estimate at t = T-1 (divided by α ≈ 0.005 on the cosine schedule) ruins samples.
PIXEL = {"timestep_spacing": "trailing", "thresholding": True}
SCHEDULERS = {
    "ours DPMSolver2M": (DPMSolver2MScheduler, PIXEL),
    "ours DDIMEta (η=0)": (DDIMEtaScheduler, {"timestep_spacing": "trailing"}),
    "ours DDPMAncestral": (DDPMAncestralScheduler, {"timestep_spacing": "trailing"}),
    "diffusers DPMSolverMultistep++ 2M": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **PIXEL},
    ),
    "diffusers UniPC": (UniPCMultistepScheduler, PIXEL),
    "diffusers DDIM (η=0)": (DDIMScheduler, {"timestep_spacing": "trailing"}),
    "diffusers DDPM": (DDPMScheduler, {"timestep_spacing": "trailing"}),
    "diffusers Euler": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="runs/ddpm-digits")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10, 15, 20, 50])
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS))
    parser.add_argument("--bf16", action="store_true", help="UNet in bf16 (scheduler state stays fp32)")
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--merge", action="store_true", help="update the schedulers run now in the saved JSON")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.pipeline, torch_dtype=torch.bfloat16 if args.bf16 else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    resolution = pipe.unet.config.sample_size
    extractor = build_feature_extractor("digits", resolution=resolution)
    real = reference_features("digits", extractor, resolution)

    results: dict[str, dict[int, float]] = {}
    for name in args.schedulers:
        cls, overrides = SCHEDULERS[name]
        pipe.scheduler = cls.from_config(base_config, **overrides)
        results[name] = {}
        for nfe in args.nfe:
            start = time.perf_counter()
            metrics = evaluate_pipeline(
                pipe, args.num_samples, real, extractor, batch_size=250, num_inference_steps=nfe, kid_subsets=20
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
    with open(os.path.join(args.results_dir, "fid_vs_nfe.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in results.items():
        ax.plot(list(row), list(row.values()), marker="o", ls="-" if name.startswith("ours") else "--", label=name)
    if target is not None:
        ax.axhline(target, color="gray", lw=0.8, ls=":", label="diffusers DDIM, 50 steps")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="digits-FID (lower is better)")
    ax.set_xticks(args.nfe, [str(n) for n in args.nfe])
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(os.path.join(args.results_dir, "fid_vs_nfe.png"), dpi=120)


if __name__ == "__main__":
    main()
