"""The accelerate config files in `training/accelerate_configs/`: each parses with accelerate's own loader into the
setup it names, the wheel ships them, and the ones a CPU can run train (the FSDP one: tests/training/test_fsdp.py).
DeepSpeed ZeRO-2 needs CUDA and the `deepspeed` package: it is only parsed here."""

from __future__ import annotations

import json
import subprocess
import sys
from fnmatch import fnmatch

import pytest
import tomllib
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from tests.training.processes import REPO, script_env

CONFIGS = REPO / "training" / "accelerate_configs"
EXPECTED = {
    "single_cpu.yaml": (DistributedType.NO, 1),
    "multi_gpu_ddp.yaml": (DistributedType.MULTI_GPU, 2),
    "fsdp.yaml": (DistributedType.FSDP, 2),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2),
}


def test_every_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_loader(name):
    config = load_config_from_file(str(CONFIGS / name))
    distributed_type, num_processes = EXPECTED[name]
    assert config.distributed_type == distributed_type and config.num_processes == num_processes
    assert config.mixed_precision in ("no", "bf16")
    if name == "fsdp.yaml":  # FSDP2, full shard, block auto-wrap (the trainer names the blocks), sharded checkpoints
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if name == "deepspeed_zero2.yaml":
        assert config.deepspeed_config["zero_stage"] == 2
    if name == "single_cpu.yaml":
        assert config.use_cpu is True


def test_the_wheel_ships_the_configs():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["custom_pipelines.scripts"]
    files = [p.relative_to(REPO / "training").as_posix() for p in CONFIGS.glob("*")]
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), files


def launch(config: str, output_dir, *extra: str, **env: str) -> dict:
    args = [
        "--dataset_name", "digits", "--output_dir", str(output_dir), "--model_config", "ddpm-tiny-8",
        "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "32", "--max_train_steps", "2",
        "--checkpointing_steps", "2", "--validation_steps", "2", "--num_validation_images", "2",
        "--num_inference_steps", "2", "--lr_warmup_steps", "0", "--mixed_precision", "no",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *extra,
           "--main_process_port", "0", str(REPO / "training" / "train_ddpm.py"), *args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=script_env(**env), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / "training_summary.json").read_text())


def test_single_cpu_config_trains(tmp_path):
    summary = launch("single_cpu.yaml", tmp_path / "one")
    assert summary["world_size"] == 1 and summary["distributed_type"] == "NO" and summary["global_step"] == 2
    assert (tmp_path / "one" / "model_index.json").is_file()


@pytest.mark.slow
def test_ddp_config_trains_on_two_cpu_processes(tmp_path):
    """The GPU DDP file on CPU (ACCELERATE_USE_CPU=1; its bf16 overridden by --mixed_precision no): two gloo ranks."""
    summary = launch("multi_gpu_ddp.yaml", tmp_path / "ddp", "--mixed_precision", "no", ACCELERATE_USE_CPU="1")
    assert summary["world_size"] == 2 and summary["distributed_type"] == "MULTI_CPU"
    assert summary["param_checksums"]["unet"][0] == summary["param_checksums"]["unet"][1]
