import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.precision import resolve_mixed_precision
from custom_pipelines.training import list_checkpoints, read_metrics
from tests.utils import run_model_card_snippet
from training import train_ddpm

REPO = Path(__file__).resolve().parents[2]


def tiny_args(output_dir, *extra):
    return [
        "--dataset_name", "digits", "--output_dir", str(output_dir), "--model_config", "ddpm-tiny-8",
        "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "6",
        "--checkpointing_steps", "3", "--validation_steps", "6", "--num_validation_images", "4",
        "--num_inference_steps", "2", "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0",
        *extra,
    ]  # fmt: skip


def unet_weights(folder):
    return load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))


def test_train_save_reload_and_sample(tmp_path):
    out = tmp_path / "run"
    train_ddpm.main(train_ddpm.parse_args(tiny_args(out)))
    for name in ("model_index.json", "README.md", "loss_curve.png", "metrics.jsonl", "training_summary.json"):
        assert (out / name).is_file(), name
    assert sorted(os.listdir(out / "samples")) == ["step_000006.png"]
    assert [step for step, _ in list_checkpoints(out)] == [3, 6]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(m["loss"]) for m in metrics)
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "UnconditionalDiffusionPipeline" in card
    assert "accelerate launch training/train_ddpm.py" in card
    # the card's usage snippet runs as written (the folder is its repo id here), fewer steps for speed
    sample = run_model_card_snippet(out, tmp_path, num_inference_steps=2)
    assert sample.size == (8, 8)

    pipe = UnconditionalDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 8, 8, 1) and 0 <= images.min() and images.max() <= 1
    assert pipe.scheduler.config.num_train_timesteps == 100
    summary = json.loads((out / "training_summary.json").read_text())
    # --mixed_precision auto: bf16 only on a CPU that runs it natively; the attention default follows the precision
    expected = resolve_mixed_precision("auto", "cpu")
    assert summary["mixed_precision"] == expected.mixed_precision and summary["mixed_precision_requested"] == "auto"
    assert summary["mixed_precision_reason"] == expected.reason and "CPU" in expected.reason
    assert summary["attention_backend"] == ("math" if expected.mixed_precision == "bf16" else "sdpa")


def test_resume_from_latest_continues_exactly(tmp_path):
    """Interrupted after step 3 and resumed → the same final weights as an uninterrupted run (and EMA too)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ddpm.main(train_ddpm.parse_args(tiny_args(straight)))
    train_ddpm.main(train_ddpm.parse_args(tiny_args(resumed, "--max_train_steps", "6")))
    # Simulate a crash after checkpoint-3: drop everything written later, plus a half-written checkpoint.
    import shutil

    shutil.rmtree(resumed / "checkpoint-6")
    (resumed / ".tmp-checkpoint-6").mkdir()
    (resumed / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_ddpm.main(train_ddpm.parse_args(tiny_args(resumed, "--resume_from_checkpoint", "latest")))
    summary = json.loads((resumed / "training_summary.json").read_text())
    assert summary["global_step"] == 6
    assert summary["mixed_precision_reason"] == "kept from checkpoint-3, where the run began"  # auto not re-probed
    steps = [m["step"] for m in read_metrics(resumed)]
    assert steps == [1, 2, 3, 4, 5, 6]  # 4..6 of the killed run dropped at the resume, then logged again once
    a, b = unet_weights(straight), unet_weights(resumed)  # saved weights are the EMA weights
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert [s for s, _ in list_checkpoints(resumed)] == [3, 6]


def test_a_resumed_auto_run_keeps_the_precision_it_began_with(tmp_path):
    """A run begun in fp32 and resumed with the default `auto` stays fp32, even where `auto` would now pick bf16:
    the checkpoint records the precision, and a resumed run is the same run."""
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path / "run"
    train_ddpm.main(train_ddpm.parse_args(tiny_args(out, "--mixed_precision", "no", "--max_train_steps", "3")))
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["mixed_precision"] == "no"
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_ddpm.main(train_ddpm.parse_args(tiny_args(out, "--resume_from_checkpoint", "latest")))
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["global_step"], summary["mixed_precision"], summary["mixed_precision_requested"]) == (
        6,
        "no",
        "auto",
    )
    assert summary["mixed_precision_reason"] == "kept from checkpoint-3, where the run began"


def test_checkpoints_total_limit(tmp_path):
    out = tmp_path / "run"
    train_ddpm.main(
        train_ddpm.parse_args(tiny_args(out, "--checkpointing_steps", "2", "--checkpoints_total_limit", "2"))
    )
    assert [s for s, _ in list_checkpoints(out)] == [4, 6]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["world_size"] == 1 and "unet" in state["ema"]
    assert (out / "checkpoint-6" / "ema" / "unet.safetensors").is_file()


def test_hybrid_loss_trains_learned_variance(tmp_path):
    out = tmp_path / "hybrid"
    train_ddpm.main(train_ddpm.parse_args(tiny_args(out, "--loss_type", "hybrid", "--max_train_steps", "3")))
    pipe = UnconditionalDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.out_channels == 2 and pipe.scheduler.config.variance_type == "learned_range"
    metrics = read_metrics(out)
    assert all(m["loss_vlb"] > 0 for m in metrics)
    images = pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 1) and np.isfinite(images).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_train_steps", "-5"], "max_train_steps"),
        (["--prediction_type", "noise"], "prediction_type"),
        (["--beta_schedule", "quadratic"], "beta_schedule"),
        (["--loss_type", "l1"], "loss_type"),
        (["--learning_rate", "0"], "learning_rate"),
        (["--train_batch_size", "0"], "train_batch_size"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], "resume_from_checkpoint"),
    ],
)
def test_bad_flags_raise_clear_errors(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        args = train_ddpm.parse_args(tiny_args(tmp_path / "x", *extra))
        train_ddpm.main(args)


def test_bad_dataset_and_resolution(tmp_path):
    with pytest.raises(ValueError, match="not a built-in dataset"):
        train_ddpm.main(train_ddpm.parse_args(tiny_args(tmp_path / "a", "--dataset_name", "no-such-dataset-xyz")))
    with pytest.raises(ValueError, match="divisible by the UNet's downsampling factor 2"):
        train_ddpm.main(train_ddpm.parse_args(tiny_args(tmp_path / "b", "--resolution", "9")))


def test_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "training" / "train_ddpm.py"),
            *tiny_args(tmp_path / "c", "--prediction_type", "x"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode != 0 and "--prediction_type must be one of" in result.stderr
    assert "Traceback" not in result.stderr


def launch_two_processes(args):
    from tests.training.processes import launch_two_processes as launch

    return launch("train_ddpm.py", args)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_and_resume(tmp_path):
    out = tmp_path / "ddp"
    summary = launch_two_processes(tiny_args(out, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    assert summary["world_size"] == 2, "accelerate started one process: the --cpu trap"
    ranks = summary["param_checksums"]["unet"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept the two ranks' weights identical
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_step"] == 4
    assert {f for f in os.listdir(out / "checkpoint-4") if f.startswith("random_states")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }

    summary = launch_two_processes(
        tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    )
    assert summary["global_step"] == 6 and summary["world_size"] == 2
    assert summary["param_checksums"]["unet"][0] == summary["param_checksums"]["unet"][1]
    assert [m["step"] for m in read_metrics(out)][-2:] == [5, 6]


def test_eval_fid_every_logs_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTOM_PIPELINES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    args = tiny_args(out, "--max_train_steps", "4", "--eval_fid_every", "2", "--eval_num_samples", "16")
    train_ddpm.main(train_ddpm.parse_args(args))
    evals = [m for m in read_metrics(out) if "eval/fid" in m]
    assert [m["step"] for m in evals] == [2, 4]
    for m in evals:
        assert m["eval/fid"] > 0 and np.isfinite(m["eval/kid_mean"]) and 0 <= m["eval/precision"] <= 1


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(tmp_path):
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(out, "--checkpointing_steps", "2", "--use_ema")

    files = ["unet/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_ddpm.py", args_for, tmp_path, files) == 3


@pytest.mark.slow
def test_when_one_of_two_processes_dies_the_run_stops_instead_of_hanging(tmp_path, monkeypatch):
    """Rank 1 is SIGKILLed after step 3; rank 0 must not wait forever in the next all-reduce: the launcher stops
    the run (well inside --ddp_timeout) with a non-zero exit, and checkpoint-2 stays complete for a resume."""
    import time

    out = tmp_path / "ddp-dies"
    monkeypatch.setenv("CUSTOM_PIPELINES_FAULT", "step:3:1")
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"rank\s+: 1 \(local_rank: 1\)\s+exitcode\s+: -9"):
        launch_two_processes(tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert time.monotonic() - start < 180
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "model_index.json").exists()


def test_an_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="--output_dir .* cannot be written to"):
        train_ddpm.main(train_ddpm.parse_args(tiny_args(blocker / "run")))


def test_a_full_disk_at_a_checkpoint_or_the_final_save_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    import errno

    from accelerate.state import AcceleratorState, GradientState

    from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
    from custom_pipelines.training import checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save_ema, calls = checkpoint.save_ema, []

    def save_ema_then_full(*args, **kwargs):  # checkpoint-2 is written, checkpoint-4 finds the disk full
        calls.append(1)
        return real_save_ema(*args, **kwargs) if len(calls) == 1 else full()

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_ema", save_ema_then_full)
    with pytest.raises(OSError, match=r"checkpoint-4 could not be written .*No space left.*earlier checkpoints there"):
        train_ddpm.main(train_ddpm.parse_args(tiny_args(out, "--checkpointing_steps", "2")))
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / ".tmp-checkpoint-4").exists() and not (out / "checkpoint-4").exists()

    monkeypatch.setattr(checkpoint, "save_ema", real_save_ema)
    monkeypatch.setattr(UnconditionalDiffusionPipeline, "save_pretrained", full)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    args = tiny_args(out, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    with pytest.raises(OSError, match="the final pipeline could not be written .* checkpoints in it are intact"):
        train_ddpm.main(train_ddpm.parse_args(args))
    assert (out / "checkpoint-6" / "trainer_state.json").is_file() and not (out / "model_index.json").exists()
