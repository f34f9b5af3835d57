"""Training scripts as real processes: one plain Python process (`run_script`), or two CPU processes under
`accelerate launch` (`launch_two_processes`), each with the repo on PYTHONPATH, one OpenMP thread and the Hub off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", **extra}  # fmt: skip
    return env


def run_script(script: str, args: list[str], fault: str | None = None, timeout: int = 600):
    """`python training/<script> args` (with `CUSTOM_PIPELINES_FAULT=fault` when given); the CompletedProcess."""
    env = script_env()
    env.pop("CUSTOM_PIPELINES_FAULT", None)
    if fault:
        env["CUSTOM_PIPELINES_FAULT"] = fault
    cmd = [sys.executable, str(REPO / "training" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def launch_two_processes(script: str, args: list[str], timeout: int = 600) -> dict:
    """`accelerate launch` of training/<script> on two CPU processes (gloo); asserts success and returns the run's
    training_summary.json. `ACCELERATE_USE_CPU` and `--multi_gpu` give two CPU ranks (`--cpu` alone starts one)."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO / "training" / script), *args, "--ddp_timeout", "120",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=script_env(ACCELERATE_USE_CPU="1"), timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output_dir = Path(args[len(args) - 1 - args[::-1].index("--output_dir") + 1])  # the last --output_dir wins
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["world_size"] == 2, "accelerate started one process: the --cpu trap"
    return summary
