"""Checkpoints that are never half-written: everything goes to a hidden temp folder, renamed when complete.

A checkpoint folder `checkpoint-<step>/` holds accelerate's state (models as safetensors, optimizers, lr schedulers,
sampler and RNG states) plus ours: `ema/<model>.safetensors` and `trainer_state.json` (step, precision, EMA
counters, the script's extra state such as a GAN's growing stage; tensors in it, such as a CycleGAN's image pools, go
to `extra_state.safetensors`, so nothing in a checkpoint of ours is a pickle). A crash mid-save leaves only
`.tmp-checkpoint-<step>`, which `latest` never picks.

Under FSDP (`sharded_ema=True`) accelerate writes the models and optimizers as sharded DCP folders and every rank
writes the EMA of its own shards, `ema/<model>.rank<r>.safetensors`: such a checkpoint resumes on as many ranks.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

from custom_pipelines.faults import fault_point

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
EXTRA_TENSORS_FILE = "extra_state.safetensors"
_TENSOR_REF = "__tensor__"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in `output_dir`, oldest first, as (step, path)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        if match and os.path.isfile(os.path.join(output_dir, name, STATE_FILE)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """`latest` → newest complete checkpoint in output_dir (None if there is none yet); a path → itself, checked."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    if not os.path.isfile(os.path.join(resume_from_checkpoint, STATE_FILE)):
        raise ValueError(
            f"--resume_from_checkpoint must be 'latest' or a complete checkpoint folder (with {STATE_FILE}), "
            f"got {resume_from_checkpoint!r}"
        )
    return resume_from_checkpoint


def ema_file(folder: str, name: str, rank: int | None = None) -> str:
    """The EMA file of model `name`: one per model, or under FSDP one per model and rank (its shards)."""
    return os.path.join(folder, f"{name}.safetensors" if rank is None else f"{name}.rank{rank}.safetensors")


def save_ema(ema_models: dict, folder: str, rank: int | None = None) -> dict:
    """Shadow parameters as safetensors (one file per model, or per model and `rank`); returns the EMA counters for
    the JSON state."""
    os.makedirs(folder, exist_ok=True)
    counters = {}
    for name, ema in ema_models.items():
        tensors = {f"{i:05d}": p.detach().to("cpu").contiguous() for i, p in enumerate(ema.shadow_params)}
        save_file(tensors, ema_file(folder, name, rank))
        counters[name] = {"optimization_step": int(ema.optimization_step), "decay": float(ema.decay)}
    return counters


def load_ema(ema_models: dict, folder: str, counters: dict, rank: int | None = None) -> None:
    for name, ema in ema_models.items():
        path = ema_file(folder, name, rank)
        if not os.path.isfile(path):
            kind = "an unsharded" if rank is not None else "a sharded (FSDP)"
            raise ValueError(
                f"{folder} holds no {os.path.basename(path)}: it is {kind} run's checkpoint or one of another number "
                "of ranks; resume it the way it was trained (same --use_fsdp and --num_processes)"
            )
        tensors = load_file(path)
        if len(tensors) != len(ema.shadow_params):
            raise ValueError(
                f"EMA checkpoint of {name!r} has {len(tensors)} tensors, the model {len(ema.shadow_params)}"
            )
        with torch.no_grad():
            for i, shadow in enumerate(ema.shadow_params):
                shadow.copy_(tensors[f"{i:05d}"].to(shadow.device, shadow.dtype))
        ema.optimization_step = counters[name]["optimization_step"]


def split_tensors(obj, tensors: dict[str, torch.Tensor], path: str = "extra"):
    """`obj` with every tensor replaced by {"__tensor__": key} and stored in `tensors` (nested dicts/lists)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous()
        return {_TENSOR_REF: path}
    if isinstance(obj, dict):
        return {k: split_tensors(v, tensors, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    return obj


def join_tensors(obj, tensors: dict[str, torch.Tensor]):
    """The inverse of `split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_REF}:
            return tensors[obj[_TENSOR_REF]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_checkpoint(
    accelerator,
    output_dir: str,
    step: int,
    ema_models: dict,
    state: dict,
    total_limit: int | None,
    sharded_ema: bool = False,
):
    """Write `checkpoint-<step>` atomically on all ranks' behalf; rotate old ones past `total_limit`. With
    `sharded_ema` every rank writes the EMA of its own shards."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{step}")
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # debris of an interrupted save
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(tmp)  # every rank takes part (each saves its own RNG state)
        if sharded_ema:
            state = {**state, "ema": save_ema(ema_models, os.path.join(tmp, "ema"), accelerator.process_index)}
        fault_point("checkpoint", step)
        # save_state ends without a barrier: let every rank finish writing into tmp before rank 0 renames it
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _finish_checkpoint(tmp, final, output_dir, state, step, ema_models, total_limit)
    except OSError as err:  # a full disk or a folder gone read-only: the earlier checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            f"checkpoint-{step} could not be written to {output_dir} ({err}); the earlier checkpoints there are "
            "intact: free space and rerun with --resume_from_checkpoint latest"
        ) from err
    accelerator.wait_for_everyone()
    return final


def _finish_checkpoint(tmp, final, output_dir, state, step, ema_models, total_limit) -> None:
    """Rank 0: our state and EMA into the temp folder, then the rename that makes it `latest`; rotation."""
    tensors: dict[str, torch.Tensor] = {}
    state = split_tensors(state, tensors, "state")
    if tensors:
        save_file(tensors, os.path.join(tmp, EXTRA_TENSORS_FILE))
    if "ema" not in state:  # unsharded: the one copy of the EMA, written by rank 0
        state = {**state, "ema": save_ema(ema_models, os.path.join(tmp, "ema"))}
    state = {**state, "global_step": step}
    with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    if total_limit is not None:
        for _, old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_state(path: str) -> dict:
    """The JSON trainer state of a complete checkpoint (step, precision, EMA counters, the script's extra state)."""
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def load_checkpoint(accelerator, path: str, ema_models: dict, sharded_ema: bool = False) -> dict:
    """Restore accelerate's state and our EMA (each rank its own shards' with `sharded_ema`); return the JSON trainer
    state."""
    accelerator.load_state(path)
    state = read_checkpoint_state(path)
    tensors_file = os.path.join(path, EXTRA_TENSORS_FILE)
    if os.path.isfile(tensors_file):
        state = join_tensors(state, load_file(tensors_file))
    rank = accelerator.process_index if sharded_ema else None
    load_ema(ema_models, os.path.join(path, "ema"), state.get("ema", {}), rank)
    return state
