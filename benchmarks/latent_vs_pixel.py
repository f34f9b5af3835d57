"""Latent vs pixel diffusion on digits at 32×32 with the same training wall-clock: digits-FID (DDIM-50) and the cost
of a sample.

Both runs use the same recipe (v-prediction, Min-SNR-5, lr 1e-3 cosine with warm-up, batch 64, EMA) and are
unconditional: pixel = train_ddpm.py with `--pixel_config` (default ddpm-digits-16's UNet) at 32×32, latent =
train_ldm.py on the latents of a trained VAE (`--vae`, e.g. `make demo-vae`; its training time is reported apart,
as the VAE is trained once and reused). Each run's step count is set from its measured speed (two short probe runs)
so that both train for `--time_budget_s`; then both are sampled with DDIM-50 (`--num_samples`) and scored with the
digits feature extractor (custom_pipelines.evaluation), and the CPU seconds per sample are timed on one thread.
Writes <output_dir>/latent_vs_pixel.{json,md}.

    python benchmarks/latent_vs_pixel.py --vae runs/vae-digits-32 --time_budget_s 240
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = [
    "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--train_batch_size", "64",
    "--prediction_type", "v_prediction", "--snr_gamma", "5", "--report_to", "none", "--seed", "0",
]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vae", required=True, help="a train_vae.py output folder (f=4 for 32×32 digits)")
    parser.add_argument("--time_budget_s", type=float, default=240.0, help="training wall-clock of each run")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--pixel_config", default="ddpm-digits-16", help="hub_configs variant of the pixel UNet")
    parser.add_argument("--latent_config", default="ldm-digits-32")
    parser.add_argument("--kinds", nargs="+", default=["pixel", "latent"], choices=["pixel", "latent"])
    parser.add_argument("--output_dir", default="runs/latent-vs-pixel")
    return parser.parse_args(argv)


def command(kind: str, args, output_dir: str, steps: int) -> list[str]:
    common = ["--dataset_name", "digits", "--output_dir", output_dir, "--max_train_steps", str(steps),
              "--checkpointing_steps", str(10**9), "--validation_steps", str(10**9), *RECIPE]  # fmt: skip
    if kind == "pixel":
        return [sys.executable, os.path.join(REPO, "training", "train_ddpm.py"), "--model_config", args.pixel_config,
                "--resolution", "32", *common]  # fmt: skip
    return [sys.executable, os.path.join(REPO, "training", "train_ldm.py"), "--model_config", args.latent_config,
            "--conditioning", "none", "--vae_name_or_path", args.vae, "--cache_latents", *common]  # fmt: skip


def timed_run(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def seconds_per_step(kind: str, args) -> float:
    """Two probe runs (20 and 80 steps): the slope leaves out start-up, data loading and the final save."""
    short = timed_run(command(kind, args, os.path.join(args.output_dir, f"probe-{kind}-20"), 20))
    long = timed_run(command(kind, args, os.path.join(args.output_dir, f"probe-{kind}-80"), 80))
    return max(long - short, 1e-3) / 60


def main(args: argparse.Namespace) -> dict:
    import torch
    from diffusers import DDIMScheduler

    from custom_pipelines.evaluation import evaluate_pipeline
    from custom_pipelines.hub.loader import load_pipeline
    from custom_pipelines.io import write_json
    from custom_pipelines.precision import cpu_capability, native_bf16

    os.makedirs(args.output_dir, exist_ok=True)
    torch.set_num_threads(1)
    cpu = f"{cpu_capability()}, native bf16: {native_bf16('cpu')[0]}"
    report = {"cpu": cpu, "time_budget_s": args.time_budget_s, "num_samples": args.num_samples, "runs": {}}
    for kind in args.kinds:
        per_step = seconds_per_step(kind, args)
        steps = max(50, int(args.time_budget_s / per_step))
        folder = os.path.join(args.output_dir, kind)
        wall = timed_run(command(kind, args, folder, steps))
        pipe = load_pipeline(folder)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        cpu0 = time.process_time()
        with torch.no_grad():
            pipe(batch_size=16, num_inference_steps=50, generator=torch.Generator().manual_seed(1), output_type="pt")
        cpu_per_sample = (time.process_time() - cpu0) / 16
        scores = evaluate_pipeline(pipe, args.num_samples, reference="digits", num_inference_steps=50, seed=0)
        report["runs"][kind] = {
            "seconds_per_step": per_step,
            "steps": steps,
            "train_wall_s": wall,
            "cpu_s_per_sample_ddim50": cpu_per_sample,
            "fid": float(scores["fid"]),
        }
        print(kind, report["runs"][kind], flush=True)
    if len(report["runs"]) == 2:
        pixel, latent = report["runs"]["pixel"], report["runs"]["latent"]
        report["sample_cost_ratio"] = pixel["cpu_s_per_sample_ddim50"] / latent["cpu_s_per_sample_ddim50"]
        report["fid_ratio_latent_over_pixel"] = latent["fid"] / pixel["fid"]
    vae_metrics = os.path.join(args.vae, "reconstruction_metrics.json")
    if os.path.isfile(vae_metrics):
        with open(vae_metrics, encoding="utf-8") as f:
            report["vae"] = json.load(f)
    write_json(os.path.join(args.output_dir, "latent_vs_pixel.json"), report)
    lines = [
        f"CPU: {report['cpu']}; training budget {args.time_budget_s:.0f} s each; digits-FID of {args.num_samples} "
        "DDIM-50 samples",
        "",
        "| model | s / step | steps | train wall s | CPU s / sample | digits-FID |",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in report["runs"].items():
        lines.append(f"| {kind} | {row['seconds_per_step']:.3f} | {row['steps']} | {row['train_wall_s']:.0f} | "
                     f"{row['cpu_s_per_sample_ddim50']:.3f} | {row['fid']:.2f} |")  # fmt: skip
    if "sample_cost_ratio" in report:
        lines.append("")
        lines.append(f"latent sampling {report['sample_cost_ratio']:.1f}× cheaper; FID latent / pixel = "
                     f"{report['fid_ratio_latent_over_pixel']:.2f}")  # fmt: skip
    with open(os.path.join(args.output_dir, "latent_vs_pixel.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main(parse_args())
