import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from custom_pipelines.gan.cyclegan import CycleGANGenerator
from custom_pipelines.gan.patchgan import PatchGANDiscriminator
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR
from custom_pipelines.pipelines.pipeline_cyclegan import CycleGANPipeline
from custom_pipelines.training import list_checkpoints, read_metrics
from tests.utils import run_model_card_snippet
from training import train_cyclegan

REPO = Path(__file__).resolve().parents[2]
VARIANT = "cyclegan-digits-thick-16"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The digits variant at a tiny size (8×8 grayscale), with its model_index.json and recipe."""
    folder = tmp_path_factory.mktemp("cyclegan-tiny")
    shutil.copy(HUB_CONFIGS_DIR / VARIANT / "model_index.json", folder)
    shutil.copy(HUB_CONFIGS_DIR / VARIANT / "training_recipe.json", folder)
    for name in ("generator_a_to_b", "generator_b_to_a"):
        CycleGANGenerator(1, 1, base_channels=4, num_downsamplings=1, num_residual_blocks=1).save_config(folder / name)
    for name in ("discriminator_a", "discriminator_b"):
        PatchGANDiscriminator(1, base_channels=4, num_layers=1).save_config(folder / name)
    return folder


def tiny_args(config, output_dir, *extra):
    return [
        "--model_config", str(config), "--dataset_name", "digits-thick", "--output_dir", str(output_dir),
        "--resolution", "8", "--train_batch_size", "4", "--max_train_samples", "32", "--max_train_steps", "6",
        "--checkpointing_steps", "3", "--validation_steps", "6", "--num_validation_images", "2",
        "--num_eval_images", "8", "--pool_size", "6", "--logging_steps", "1", "--report_to", "none", *extra,
    ]  # fmt: skip


def test_trains_saves_a_pipeline_folder_and_reloads(config, tmp_path):
    out = tmp_path / "run"
    train_cyclegan.main(train_cyclegan.parse_args(tiny_args(config, out)))
    for name in ("model_index.json", "README.md", "loss_curve.png", "training_recipe.json"):
        assert (out / name).is_file(), name
    for name in ("generator_a_to_b", "generator_b_to_a", "discriminator_a", "discriminator_b"):
        assert (out / name / WEIGHTS).is_file() and (out / name / "config.json").is_file(), name
    assert sorted(os.listdir(out / "samples")) == ["step_000000.png", "step_000006.png"]  # before and after
    metrics = read_metrics(out)
    train_rows = [m for m in metrics if "g_loss" in m]
    assert [m["step"] for m in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("g_adversarial_loss", "cycle_loss", "identity_loss", "d_a_loss", "d_b_loss", "d_loss"):
        assert all(np.isfinite(m[key]) for m in train_rows), key
    evals = [m for m in metrics if "eval/cycle_l1_a" in m]
    assert [m["step"] for m in evals] == [0, 6] and all(0 < m["eval/cycle_l1_b"] < 1 for m in evals)
    # lr: constant for the first half, then linear to 0 (junyanz)
    lrs = [m["lr_generators"] for m in train_rows]
    assert lrs == pytest.approx([2e-4, 2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3, 0.0], rel=1e-6, abs=1e-12)

    pipe = CycleGANPipeline.from_pretrained(out)
    image = torch.rand(1, 1, 11, 9)
    assert pipe(image, output_type="pt").images.shape == (1, 1, 11, 9)
    assert PatchGANDiscriminator.from_pretrained(out / "discriminator_b").config.num_layers == 1
    recipe = json.loads((out / "training_recipe.json").read_text())
    assert recipe["lambda_identity"] == 0.5 and recipe["pool_size"] == 6 and recipe["resolution"] == 8
    card = (out / "README.md").read_text()
    assert "pipe(image=image, direction='a_to_b')" in card and "generator=" not in card
    assert "train_cyclegan.py" in card
    sample = run_model_card_snippet(out, tmp_path)  # the card's usage snippet runs as written
    assert sample.size == (8, 8) and sample.mode == "L"


def test_resume_from_latest_continues_exactly(config, tmp_path):
    """Pools, RNG, optimizers and EMA all come back: a resumed run ends with the straight run's weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cyclegan.main(train_cyclegan.parse_args(tiny_args(config, straight)))
    train_cyclegan.main(train_cyclegan.parse_args(tiny_args(config, resumed)))
    shutil.rmtree(resumed / "checkpoint-6")
    # the pools are in the checkpoint as safetensors + JSON, not as accelerate's pickled custom checkpoint
    checkpoint = resumed / "checkpoint-3"
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    state = json.loads((checkpoint / "trainer_state.json").read_text())["extra"]
    pool_images = load_file(checkpoint / "extra_state.safetensors")
    assert state["a"]["counts"] == [6] and pool_images[state["a"]["images"]["__tensor__"]].shape == (1, 6, 1, 8, 8)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_cyclegan.main(train_cyclegan.parse_args(tiny_args(config, resumed, "--resume_from_checkpoint", "latest")))
    assert [m["step"] for m in read_metrics(resumed) if "g_loss" in m][-3:] == [4, 5, 6]
    for name in ("generator_a_to_b", "generator_b_to_a", "discriminator_a", "discriminator_b"):
        a, b = load_file(straight / name / WEIGHTS), load_file(resumed / name / WEIGHTS)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_the_variant_recipe_is_the_default_and_the_command_line_wins():
    base = ["--dataset_name", "digits-thick", "--output_dir", "x", "--max_train_steps", "1"]
    args = train_cyclegan.parse_args(base)
    recipe = json.loads((HUB_CONFIGS_DIR / VARIANT / "training_recipe.json").read_text())
    assert {key: getattr(args, key) for key in recipe} == recipe
    assert args.training_recipe == str(HUB_CONFIGS_DIR / VARIANT / "training_recipe.json")
    args = train_cyclegan.parse_args([*base, "--lambda_cycle", "5", "--resolution", "12"])
    assert (args.lambda_cycle, args.resolution, args.learning_rate) == (5.0, 12, 2e-4)
    big = train_cyclegan.parse_args([*base, "--model_config", "cyclegan-horse2zebra-256"])
    assert (big.resolution, big.train_batch_size, big.use_ema) == (256, 1, False)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lambda_cycle", "-1"], "--lambda_cycle must be >= 0"),
        (["--pool_return_probability", "2"], "--pool_return_probability must be in"),
        (["--pool_size", "-3"], "--pool_size must be >= 0"),
        (["--gradient_accumulation_steps", "2"], "gradient_accumulation_steps must be 1"),
        (["--holdout_fraction", "0"], "--holdout_fraction must be in"),
        (["--dataset_name", "digits"], "is not a built-in pair"),
    ],
)
def test_bad_flags_raise_clear_errors(config, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_cyclegan.main(train_cyclegan.parse_args(tiny_args(config, tmp_path / "x", *extra)))


def test_channel_mismatch_between_configs_raises(config, tmp_path):
    folder = tmp_path / "rgb-d"
    shutil.copytree(config, folder)
    PatchGANDiscriminator(3, base_channels=4, num_layers=1).save_config(folder / "discriminator_b")
    with pytest.raises(ValueError, match="the model config's channels disagree"):
        train_cyclegan.main(train_cyclegan.parse_args(tiny_args(folder, tmp_path / "x")))


def test_script_reports_errors_without_traceback(config, tmp_path):
    cmd = [sys.executable, str(REPO / "training" / "train_cyclegan.py"),
           *tiny_args(config, tmp_path / "c", "--lambda_identity", "-2")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0 and "--lambda_identity must be >= 0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_and_resume(config, tmp_path):
    from tests.training.processes import launch_two_processes

    out = tmp_path / "ddp"
    args = tiny_args(config, out, "--max_train_steps", "3")
    summary = launch_two_processes("train_cyclegan.py", args)
    for name in ("generators", "discriminators"):
        ranks = summary["param_checksums"][name]
        assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept both ranks' weights identical
    pools = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["extra"]
    images = load_file(out / "checkpoint-3" / "extra_state.safetensors")[pools["b"]["images"]["__tensor__"]]
    assert pools["b"]["counts"] == [6, 6] and not torch.equal(images[0], images[1])  # each rank's own pool

    resume = [*args, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"]  # the last flag wins
    summary = launch_two_processes("train_cyclegan.py", resume)
    assert summary["global_step"] == 6
    assert summary["param_checksums"]["generators"][0] == summary["param_checksums"]["generators"][1]
    assert [s for s, _ in list_checkpoints(out)] == [3, 6]
    steps = [m["step"] for m in read_metrics(out) if "g_loss" in m]
    assert steps[-3:] == [4, 5, 6] and 4 in steps[steps.index(3) + 1 :]


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(config, tmp_path):
    """Both generators (with EMA), both discriminators, the pools and the pairing all come back."""
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(config, out, "--checkpointing_steps", "2")

    names = ("generator_a_to_b", "generator_b_to_a", "discriminator_a", "discriminator_b")
    files = [f"{name}/{WEIGHTS}" for name in names]
    assert check_kill_points("train_cyclegan.py", args_for, tmp_path, files) == 3
