"""Step time and peak RSS per rank of the same two-process training run under DDP and under FSDP (FSDP2 full shard),
on this machine's CPU (gloo), as `training_summary.json` records them (`per_rank`).

    python benchmarks/fsdp_vs_ddp.py --model_config ddpm-cifar10-32 --steps 8 --batch_size 8

Both runs: `training/train_ddpm.py`, the digits at 32×32 (replicated to RGB), fp32, one OpenMP thread per rank,
no checkpoint or validation inside the timed steps; seconds per update are counted from each rank's first update on.
Run it on an idle machine: two ranks on two cores leave nothing to spare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def launch(mode: str, model_config: str, steps: int, batch_size: int, output_dir: Path) -> dict:
    how = ["--config_file", str(REPO / "training/accelerate_configs/fsdp.yaml")] if mode == "fsdp" else ["--multi_gpu"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO / "training/train_ddpm.py"), "--dataset_name", "digits", "--model_config", model_config,
        "--resolution", "32", "--train_batch_size", str(batch_size), "--max_train_steps", str(steps),
        "--checkpointing_steps", str(10 * steps), "--validation_steps", str(10 * steps),
        "--num_validation_images", "1",
        "--num_inference_steps", "1", "--mixed_precision", "no", "--report_to", "none", "--seed", "0",
        "--output_dir", str(output_dir), "--overwrite_output_dir",
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{result.stderr[-3000:]}")
    summary = json.loads((output_dir / "training_summary.json").read_text())
    return {"distributed_type": summary["distributed_type"], "param_shard_numel": summary["param_shard_numel"],
            "per_rank": summary["per_rank"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--model_config", default="ddpm-cifar10-32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8, help="per rank")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = {"cpu": platform.processor() or platform.machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("ddp", "fsdp"):
            results[mode] = launch(mode, args.model_config, args.steps, args.batch_size, Path(tmp) / mode)
    for mode in ("ddp", "fsdp"):
        rows = results[mode]["per_rank"]
        shards = results[mode]["param_shard_numel"]["unet"]
        print(
            f"{mode:5s} ({results[mode]['distributed_type']}): "
            + ", ".join(
                f"rank {r}: {row['seconds_per_step']:.2f} s/step, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                f"{shards[r]:,} parameters held"
                for r, row in enumerate(rows)
            )
        )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
