"""Sharded training (`accelerate launch --use_fsdp`, FSDP2) on two CPU processes (gloo): really sharded (never the
silent DDP accelerate 1.16 falls back to on CPU), the same training as DDP within a stated tolerance, full unsharded
safetensors at the end, sharded checkpoints that resume bit-identically, EMA over the shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.processes import REPO, launch_two_processes, script_env

FSDP_CONFIG = REPO / "training" / "accelerate_configs" / "fsdp.yaml"
UNET_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"
KILLED = (-9, 137)


def tiny_args(output_dir, *extra):
    return [
        "--dataset_name", "digits", "--output_dir", str(output_dir), "--model_config", "ddpm-tiny-8",
        "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "6",
        "--checkpointing_steps", "2", "--validation_steps", "6", "--num_validation_images", "2",
        "--num_inference_steps", "2", "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0",
        "--use_ema", "--mixed_precision", "no", "--ddp_timeout", "120", *extra,
    ]  # fmt: skip


def launch_fsdp(script: str, args: list[str], fault: str | None = None, timeout: int = 300):
    """`accelerate launch --config_file training/accelerate_configs/fsdp.yaml` (2 processes) on the CPU; the
    CompletedProcess."""
    env = script_env(ACCELERATE_USE_CPU="1")
    env.pop("CUSTOM_PIPELINES_FAULT", None)
    if fault:
        env["CUSTOM_PIPELINES_FAULT"] = fault
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
           "--main_process_port", "0", str(REPO / "training" / script), *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def summary_of(output_dir: Path) -> dict:
    return json.loads((output_dir / "training_summary.json").read_text())


def losses(output_dir: Path) -> list[float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    result = launch_fsdp("train_ddpm.py", tiny_args(out))
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_fsdp_is_real_on_cpu_and_records_the_shards(fsdp_run):
    summary = summary_of(fsdp_run)
    assert summary["world_size"] == 2 and summary["distributed_type"] == "FSDP", summary  # never the DDP fallback
    full = sum(t.numel() for t in load_file(fsdp_run / UNET_FILE).values())
    shards = summary["param_shard_numel"]["unet"]
    assert len(shards) == 2 and sum(shards) == full and max(shards) < full, (shards, full)  # each rank holds a half
    assert summary["param_checksums"]["unet"][0] == summary["param_checksums"]["unet"][1]
    per_rank = summary["per_rank"]  # what benchmarks/fsdp_vs_ddp.py compares: time per update and peak RSS
    assert len(per_rank) == 2 and all(r["seconds_per_step"] > 0 and 100 < r["peak_rss_mib"] < 64_000 for r in per_rank)
    checkpoint = fsdp_run / "checkpoint-6"
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):  # accelerate's DCP shards, one file per rank
        assert sorted(os.listdir(checkpoint / folder)) == [".metadata", "__0_0.distcp", "__1_0.distcp"], folder
    assert sorted(os.listdir(checkpoint / "ema")) == ["unet.rank0.safetensors", "unet.rank1.safetensors"]
    assert not (checkpoint / "model.safetensors").exists()  # no unsharded DDP-style copy


def test_fsdp_saves_full_weights_that_load_and_sample(fsdp_run):
    from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline

    pipe = UnconditionalDiffusionPipeline.from_pretrained(fsdp_run)
    saved = load_file(fsdp_run / UNET_FILE)
    assert saved.keys() == pipe.unet.state_dict().keys()  # every tensor whole: no DTensor, no shard
    for key, value in pipe.unet.state_dict().items():
        assert value.shape == saved[key].shape and torch.equal(value, saved[key]), key
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (2, 8, 8, 1) and (0 <= images.images).all() and (images.images <= 1).all()


def test_fsdp_ema_over_shards_is_the_gathered_ema(fsdp_run):
    """The saved pipeline holds the EMA weights: the two ranks' shard files of the last checkpoint, concatenated in
    FSDP's dim-0 layout, are exactly the saved (gathered) tensors, and the EMA counted every step."""
    from diffusers import UNet2DModel

    saved = load_file(fsdp_run / UNET_FILE)
    names = [name for name, _ in UNet2DModel.from_pretrained(fsdp_run / "unet").named_parameters()]
    ema = [load_file(fsdp_run / "checkpoint-6" / "ema" / f"unet.rank{r}.safetensors") for r in (0, 1)]
    assert len(ema[0]) == len(ema[1]) == len(names) == len(saved)
    for i, name in enumerate(names):  # the EMA files number the parameters in `parameters()` order
        gathered = torch.cat([ema[0][f"{i:05d}"], ema[1][f"{i:05d}"]])
        assert torch.equal(gathered, saved[name]), name
    state = json.loads((fsdp_run / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["ema"]["unet"]["optimization_step"] == 6 and state["distributed_type"] == "FSDP"


@pytest.mark.slow
def test_fsdp_matches_ddp_within_tolerance(fsdp_run, tmp_path):
    """Same seed, data, initial weights (rank 0's, broadcast) and EMA: FSDP's reduce-scatter sums the gradients in
    another order than DDP's all-reduce, so the two agree to float32 rounding, amplified a little by Adam: losses
    within 1e-4, the saved EMA weights within 1e-4 (each AdamW step moves a weight by at most ~lr = 2e-4)."""
    ddp = tmp_path / "ddp"
    summary = launch_two_processes("train_ddpm.py", tiny_args(ddp))
    assert summary["distributed_type"] == "MULTI_CPU" and summary["param_shard_numel"]["unet"][0] > max(
        summary_of(fsdp_run)["param_shard_numel"]["unet"]
    )
    fsdp_losses, ddp_losses = losses(fsdp_run), losses(ddp)
    assert len(fsdp_losses) == len(ddp_losses) == 6
    assert max(abs(a - b) for a, b in zip(fsdp_losses, ddp_losses)) < 1e-4, (fsdp_losses, ddp_losses)
    a, b = load_file(fsdp_run / UNET_FILE), load_file(ddp / UNET_FILE)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst


@pytest.mark.slow
def test_fsdp_killed_mid_checkpoint_resumes_bit_identical(fsdp_run, tmp_path):
    """Both ranks SIGKILLed while writing checkpoint-4 (its sharded state in the temp folder): the resume loads the
    DCP shards, the per-rank EMA and RNG states of checkpoint-2 and ends exactly where the straight run ended."""
    out = tmp_path / "killed"
    killed = launch_fsdp("train_ddpm.py", tiny_args(out), fault="checkpoint:4")
    assert killed.returncode != 0 and "SIGKILL at checkpoint" in killed.stderr, killed.stderr[-3000:]
    assert "checkpoint-4" not in os.listdir(out) and "checkpoint-2" in os.listdir(out)
    resumed = launch_fsdp("train_ddpm.py", tiny_args(out, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert summary_of(out)["distributed_type"] == "FSDP"
    got, expected = load_file(out / UNET_FILE), load_file(fsdp_run / UNET_FILE)
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ from the straight FSDP run, e.g. {different[0]}"
    assert losses(out)[-2:] == losses(fsdp_run)[-2:]


def test_use_fsdp_in_one_process_is_refused(tmp_path):
    """`ACCELERATE_USE_FSDP` with one CPU process: a clear error, not an unsharded run."""
    env = script_env(ACCELERATE_USE_FSDP="true", ACCELERATE_USE_CPU="1", FSDP_VERSION="2")
    cmd = [sys.executable, str(REPO / "training" / "train_ddpm.py"), *tiny_args(tmp_path / "one")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode != 0 and "--use_fsdp needs 2 or more processes" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_block_class_names_are_the_unet_blocks():
    from diffusers import UNet2DModel

    from custom_pipelines.hub.configs import load_component_config
    from custom_pipelines.training.fsdp import block_class_names

    unet = UNet2DModel.from_config(load_component_config("ddpm-tiny-8", "unet"))
    names = block_class_names(unet)
    assert "UNetMidBlock2D" in names and any("Down" in n for n in names) and any("Up" in n for n in names)
    assert not {"Linear", "Dropout", "Conv2d", "ResnetBlock2D"} & set(names)  # blocks, not their pieces


@pytest.mark.slow
def test_the_class_conditional_family_trains_under_fsdp_like_ddp(tmp_path):
    """The other one-UNet family (class-conditional CFG, class labels dropped to the null class at random): sharded
    for real, the same losses as DDP, and a saved pipeline that loads and samples every class."""
    from custom_pipelines import ClassConditionalDiffusionPipeline

    def args(out):
        argv = tiny_args(out)
        argv[argv.index("--model_config") + 1] = "cfg-tiny-8"
        return argv

    fsdp_out, ddp_out = tmp_path / "fsdp", tmp_path / "ddp"
    result = launch_fsdp("train_cfg.py", args(fsdp_out))
    assert result.returncode == 0, result.stderr[-4000:]
    summary = summary_of(fsdp_out)
    assert summary["distributed_type"] == "FSDP" and len(summary["param_shard_numel"]["unet"]) == 2
    launch_two_processes("train_cfg.py", args(ddp_out))
    fsdp_losses, ddp_losses = losses(fsdp_out), losses(ddp_out)
    assert len(fsdp_losses) == 6 and max(abs(a - b) for a, b in zip(fsdp_losses, ddp_losses)) < 1e-4
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(fsdp_out)
    images = pipe(class_labels=list(range(10)), num_inference_steps=2, output_type="np").images
    assert images.shape == (10, 8, 8, 1)


@pytest.mark.parametrize(
    "stage, models, message",
    [
        (3, {"unet": None}, "ZeRO-3 is not supported"),
        (2, {"generator": None, "discriminator": None}, "DeepSpeed trains one model per engine"),
    ],
)
def test_what_deepspeed_cannot_do_is_refused(stage, models, message):
    """DeepSpeed needs CUDA (not run here): the trainer's own limits under it are checked before anything runs."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from custom_pipelines.training.fsdp import check_deepspeed

    accelerator = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)),
    )
    with pytest.raises(ValueError, match=message):
        check_deepspeed(accelerator, models)
    check_deepspeed(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), models)  # DDP: nothing to refuse
