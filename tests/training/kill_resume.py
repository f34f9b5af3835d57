"""SIGKILL a training script at chosen points, resume it with `--resume_from_checkpoint latest` after each, and check
that it ends bit-identical to a run that was never interrupted (custom_pipelines.faults names the points).

Each family's test file calls `check_kill_points` with its own tiny arguments; the default points are a kill right
after an optimizer update, one in the middle of writing a checkpoint (the temp folder written, not renamed) and one
in the middle of the final save (every component staged, nothing moved into place).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.training.processes import run_script

DEFAULT_POINTS = ("step:3", "checkpoint:4", "save")
KILLED = (-9, 137)  # SIGKILL: the signal itself, or a shell's 128 + 9


def weights(folder: Path, files: list[str]) -> dict[str, torch.Tensor]:
    return {f"{name}:{key}": value for name in files for key, value in load_file(folder / name).items()}


def check_kill_points(
    script: str,
    args_for: Callable[[Path], list[str]],
    root: Path,
    weight_files: list[str],
    points: tuple[str, ...] = DEFAULT_POINTS,
    marker: str = "model_index.json",
) -> int:
    """Kill `script` at each point in turn, each time resuming the run the kill before left (so every resume starts
    from what a kill left on disk), finish it, and compare `weight_files` with the straight run; returns the kills
    survived.

    `args_for(output_dir)` gives the script's arguments for 6 optimizer steps with a checkpoint every 2; `marker`
    is the file that makes the output a loadable folder (model_index.json, or config.json for a bare model).
    """
    out = root / "killed"
    resume: list[str] = []  # the first run starts fresh, every later one resumes
    survived = 0
    for point in points:
        killed = run_script(script, [*args_for(out), *resume], fault=point)
        assert killed.returncode in KILLED, f"{point}: not killed (rc {killed.returncode}): {killed.stderr[-2000:]}"
        assert "SIGKILL at" in killed.stderr
        names = os.listdir(out)
        if point.startswith("checkpoint"):  # the half-written checkpoint is only a temp folder, never `latest`
            step = point.split(":")[1]
            assert f".tmp-checkpoint-{step}" in names and f"checkpoint-{step}" not in names, names
        if point == "save":  # the final save: the whole pipeline or none of it, never a part
            assert marker not in names and any(n.startswith(".tmp-save-") for n in names), names
        resume = ["--resume_from_checkpoint", "latest"]
        survived += 1
    resumed = run_script(script, [*args_for(out), *resume])
    assert resumed.returncode == 0, f"resume after {points}: {resumed.stderr[-3000:]}"
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")], os.listdir(out)  # no debris left
    got = weights(out, weight_files)
    # every resume kept the precision the run began with (`auto` is not probed again) ...
    summary = json.loads((out / "training_summary.json").read_text())
    if "--mixed_precision" not in args_for(out):
        assert summary["mixed_precision_reason"].startswith("kept from checkpoint-"), summary
    # ... and the straight run takes that precision too: a fresh `auto` probe in another process under the load of
    # a parallel test worker could choose differently, and bf16 weights never equal fp32 ones
    straight = root / "straight"
    result = run_script(script, [*args_for(straight), "--mixed_precision", summary["mixed_precision"]])
    assert result.returncode == 0, result.stderr[-3000:]
    expected = weights(straight, weight_files)
    assert got.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ from the straight run after {points}, e.g. {different[0]}"
    return survived
