"""What a run may do with its `--output_dir`: start in an empty folder, continue the run it holds, or replace it.

A run never mixes into another run's folder. Training into a folder that already holds files is refused unless
  - `--resume_from_checkpoint` continues the run there: `metrics.jsonl` records and sample grids past the
    checkpoint's step are dropped (the resumed run writes them again, so the loss curve has no doubled steps), or
  - `--overwrite_output_dir` replaces it: everything an earlier run wrote is removed first (checkpoints, samples,
    logs, metrics, the saved pipeline and its components); files no run of ours writes are left, with a warning.
`--resume_from_checkpoint latest` in a folder with no checkpoint yet starts the run afresh: what is there is the
debris of an attempt that died before its first checkpoint (a pre-empted job restarted with the same command),
unless the folder holds a finished run, which is refused as above.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Literal

from .checkpoint import list_checkpoints, read_checkpoint_state
from .reporting import METRICS_FILE

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"  # written last by a finished run
# Files and folders our training runs and the documented follow-up commands (sample, optimize_timesteps, the
# quality benchmarks) write at the top of a run folder.
RUN_FILE_PATTERNS = (
    "checkpoint-*",
    ".tmp-*",
    ".write-probe-*",
    "samples",
    "logs",
    "quality",
    METRICS_FILE,
    SUMMARY_FILE,
    "loss_curve.png",
    "README.md",
    "model_index.json",
    "pipeline.py",
    "training_recipe.json",
    "config.json",
    "pytorch_lora_weights.safetensors",  # a LoRA run's adapter (custom_pipelines.lora)
    "diffusion_pytorch_model.safetensors",
    "samples*.png",
    "lora_grid.png",  # make demo-lora's grid, written into the adapter's folder
    "reconstructions.png",
    "reconstruction_metrics.json",
    "optimized_timesteps.json",
)
# a sub-folder holding any of these is a saved component (unet/, scheduler/, vae/, stylegan/, ...)
COMPONENT_FILES = ("config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json")
SAMPLE_GRID_RE = re.compile(r"^step_(\d+)\.png$")


@dataclass(frozen=True)
class OutputDirPlan:
    """What the run does with its folder before the first step: `keep` (empty, or resumed), `clear` (replace)."""

    action: Literal["keep", "clear"]
    resume_step: int | None  # the checkpoint's step when resuming: records past it are dropped
    reason: str


def run_entries(output_dir: str) -> tuple[list[str], list[str]]:
    """The top-level entries of `output_dir` split into (written by a run of ours, anything else)."""
    ours, other = [], []
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        path = os.path.join(output_dir, name)
        is_ours = any(fnmatch.fnmatch(name, pattern) for pattern in RUN_FILE_PATTERNS) or _is_component(path)
        (ours if is_ours else other).append(name)
    return ours, other


def _is_component(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    return any(n in COMPONENT_FILES or n.endswith(".safetensors") for n in names)


def plan_output_dir(
    output_dir: str, resume_from: str | None, resume_requested: bool, overwrite: bool
) -> OutputDirPlan:
    """Decide, without touching anything, what happens to `output_dir`; a ValueError when the run must not start.

    `resume_from` is the resolved checkpoint (None when there is none); `resume_requested` whether
    `--resume_from_checkpoint` was given at all."""
    if resume_from is not None:
        if overwrite:
            raise ValueError(
                "--overwrite_output_dir and --resume_from_checkpoint contradict each other: the first removes the "
                "checkpoints the second continues from; pass one of them"
            )
        step = int(read_checkpoint_state(resume_from)["global_step"])
        return OutputDirPlan("keep", step, f"resuming from {resume_from} (step {step})")
    ours, other = run_entries(output_dir)
    entries = ours + other
    if not entries:
        return OutputDirPlan("keep", None, "empty")
    if overwrite:
        return OutputDirPlan("clear", None, "--overwrite_output_dir")
    finished = SUMMARY_FILE in ours
    if resume_requested and not finished:
        return OutputDirPlan("clear", None, "no checkpoint yet: the earlier attempt's files are replaced")
    shown = ", ".join(entries[:5]) + (f", … ({len(entries)} entries)" if len(entries) > 5 else "")
    if resume_requested:  # finished, and nothing to resume from
        what, hint = "a finished run with no checkpoint to resume from", ""
    else:
        what = "a finished run" if finished else "files of another run"
        has_checkpoints = any(name.startswith("checkpoint-") for name in ours)
        hint = "pass --resume_from_checkpoint latest to continue that run, " if has_checkpoints else ""
    raise ValueError(
        f"--output_dir {output_dir!r} already holds {what} ({shown}): {hint}pass --overwrite_output_dir to "
        "replace it, or choose another folder"
    )


def apply_output_dir_plan(output_dir: str, plan: OutputDirPlan) -> None:
    """Carry out `plan` (main process only): clear the old run, or drop what a resumed run will write again."""
    if plan.action == "clear":
        clear_run(output_dir)
    elif plan.action == "keep":
        if plan.resume_step is not None:
            truncate_run(output_dir, plan.resume_step)
    else:
        raise ValueError(f"unknown output_dir action {plan.action!r}")


def clear_run(output_dir: str) -> None:
    """Remove everything a run of ours wrote in `output_dir`; warn about what is left."""
    ours, other = run_entries(output_dir)
    for name in ours:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if ours:
        logger.warning(f"{output_dir}: --overwrite_output_dir removed the earlier run's {', '.join(ours)}")
    if other:
        logger.warning(f"{output_dir}: left in place (not written by a training run): {', '.join(other)}")


def truncate_run(output_dir: str, step: int) -> None:
    """A run resumed at `step`: drop metrics records and validation grids after it, and checkpoints after it (the
    resumed run writes all of them again)."""
    from custom_pipelines.io import atomic_path

    path = os.path.join(output_dir, METRICS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if _record_step(line) <= step]
        if len(kept) != len(lines):
            with atomic_path(path, suffix=".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.writelines(kept)
            logger.info(f"{METRICS_FILE}: dropped {len(lines) - len(kept)} records after step {step} (resumed run)")
    samples = os.path.join(output_dir, "samples")
    for name in os.listdir(samples) if os.path.isdir(samples) else []:
        match = SAMPLE_GRID_RE.match(name)
        if match and int(match.group(1)) > step:
            os.remove(os.path.join(samples, name))
    later = [os.path.basename(path) for later_step, path in list_checkpoints(output_dir) if later_step > step]
    if later:  # kept (nothing saved is deleted unasked); the resumed run replaces each when it reaches its step
        logger.warning(f"resumed at step {step}: {', '.join(later)} are from the earlier run and stay until replaced")


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a torn last line of a killed run
        return 1 << 62


def check_writable(output_dir: str) -> None:
    """Create `output_dir` and write a probe file in it, so an unwritable folder fails before training, not at the
    first checkpoint."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"--output_dir {output_dir!r} cannot be written to ({err.strerror or err})") from err
