"""Does the fast training path hurt the loss curve? The `make demo` run trained three ways with the same seed.

Variants: fp32, bf16 autocast (what `make demo` uses), and bf16 autocast + torch.compile (accelerate's
`--dynamo_backend inductor`), once with the compile check off (the miscompiled graph) and once with the default
check (which recompiles with inductor's fusion limited). Same seed means the same data order, timesteps and
noise. Each run goes through `accelerate launch training/train_ddpm.py` exactly as `make demo` does, with only the
precision and compile flags changed. For each variant the script reports:
- the mean logged loss over step windows, and the paired difference to fp32;
- wall time;
- digits-FID of 1000 fp32 DDIM-50 samples of the saved pipeline (the same seeds for every variant).

    python benchmarks/precision_loss_curve.py                 # ≈ 30 min on 2 cores
    python benchmarks/precision_loss_curve.py --skip_training --run_dir runs/precision-bench

Writes benchmarks/results/precision_loss_curve.md (table) and .png (the loss curves).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

VARIANTS = {  # name: (accelerate --mixed_precision, accelerate --dynamo_backend, extra script flags)
    "fp32": ("no", "no", []),
    "bf16 autocast": ("bf16", "no", []),
    # PyTorch 2.13's CPU inductor zeroes part of the UNet's gradient (custom_pipelines/training/compile_check.py).
    # With the check off the run trains on that graph, to show what the bug does to a model ...
    "bf16 autocast + torch.compile, check off": ("bf16", "inductor", ["--compile_check", "off"]),
    # ... and with the default check, which finds it and recompiles with inductor's fusion limited.
    "bf16 autocast + torch.compile": ("bf16", "inductor", []),
}
LABELS = {
    "bf16 autocast + torch.compile, check off": "bf16 autocast + torch.compile, `--compile_check off` (miscompiled)",
    "bf16 autocast + torch.compile": "bf16 autocast + torch.compile (default check: recompiled, fusion limited)",
}
WINDOWS = ((1, 100), (101, 500), (501, 1000), (1001, 1500))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_dir", default="runs/precision-bench")
    parser.add_argument("--max_train_steps", type=int, default=1500)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--skip_training", action="store_true", help="reuse the runs in --run_dir")
    parser.add_argument("--results_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    return parser.parse_args(argv)


def folder_name(variant: str) -> str:
    return variant.replace(" + ", "-").replace(", ", "-").replace(" ", "-").replace(".", "")


def train(variant: str, output_dir: str, steps: int) -> float:
    mixed_precision, dynamo, extra = VARIANTS[variant]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", dynamo,
               "training/train_ddpm.py", "--dataset_name", "digits", "--output_dir", output_dir,
               "--max_train_steps", str(steps), "--train_batch_size", "64", "--learning_rate", "1e-3",
               "--lr_scheduler", "cosine", "--lr_warmup_steps", "100", "--ema_power", "0.75",
               "--checkpointing_steps", str(10 * steps), "--validation_steps", str(10 * steps),
               "--mixed_precision", mixed_precision, "--seed", "0", *extra]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    with open(os.path.join(output_dir, "bench_train_time.json"), "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds}, f)
    return seconds


def read_losses(output_dir: str) -> tuple[np.ndarray, np.ndarray]:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    return np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows])


def digits_fid(output_dir: str, num_samples: int) -> float:
    from custom_pipelines import evaluate_pipeline, load_pipeline
    from custom_pipelines.schedulers import scheduler_from_name

    pipe = load_pipeline(output_dir)
    pipe.scheduler = scheduler_from_name("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    metrics = evaluate_pipeline(pipe, num_samples, reference="digits", extractor="digits", num_inference_steps=50)
    return metrics["fid"]


def main(argv=None):
    args = parse_args(argv)
    rows, curves = [], {}
    for variant in VARIANTS:
        output_dir = os.path.join(args.run_dir, folder_name(variant))
        if not args.skip_training:
            train(variant, output_dir, args.max_train_steps)
        with open(os.path.join(output_dir, "bench_train_time.json"), encoding="utf-8") as f:
            seconds = json.load(f)["seconds"]
        steps, losses = read_losses(output_dir)
        curves[variant] = (steps, losses)
        windows = [losses[(steps >= lo) & (steps <= hi)].mean() for lo, hi in WINDOWS]
        rows.append((variant, seconds, windows, digits_fid(output_dir, args.num_samples)))
        print(rows[-1], flush=True)

    os.makedirs(args.results_dir, exist_ok=True)
    reference = curves["fp32"][1]
    lines = [
        "# Loss curve and FID: fp32 vs bf16 autocast vs bf16 + torch.compile (`benchmarks/precision_loss_curve.py`)",
        "",
        f"`make demo` recipe, {args.max_train_steps} steps, seed 0 for all variants (same data order, timesteps, "
        f"noise); digits-FID of {args.num_samples} fp32 DDIM-50 samples (same seeds). Wall time includes start-up "
        "(and compilation for the compiled run).",
        "",
        "| variant | wall time | "
        + " | ".join(f"mean loss, steps {lo}–{hi}" for lo, hi in WINDOWS)
        + " | mean abs. paired diff. to fp32 (logged 10-step means) | digits-FID |",
        "|---|---|" + "---|" * len(WINDOWS) + "---|---|",
    ]
    for variant, seconds, windows, fid in rows:
        diff = np.abs(curves[variant][1] - reference).mean()
        cells = " | ".join(f"{w:.4f}" for w in windows)
        lines.append(f"| {LABELS.get(variant, variant)} | {seconds:.0f} s | {cells} | {diff:.4f} | {fid:.3f} |")
    with open(os.path.join(args.results_dir, "precision_loss_curve.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, (steps, losses) in curves.items():
        if len(losses) >= 5:
            steps, losses = steps[2:-2], np.convolve(losses, np.ones(5) / 5, mode="valid")
        ax.plot(steps, losses, label=LABELS.get(variant, variant).replace("`", ""), linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (10-step means, 5-point moving average)")
    ax.set_title("make demo recipe: fp32 vs bf16 autocast vs bf16 + compile")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.results_dir, "precision_loss_curve.png"), dpi=120)


if __name__ == "__main__":
    main()
