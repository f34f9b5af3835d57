"""training/train_srgan.py: both stages train a few steps in-process and save a loadable SuperResolutionPipeline, the
recipes apply, resume continues exactly, bad flags raise; a two-process `accelerate launch` with resume (slow)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from custom_pipelines.gan.srgan import SRGANDiscriminator, SRResNetGenerator
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR
from custom_pipelines.pipelines.pipeline_super_resolution import SuperResolutionPipeline
from custom_pipelines.training import list_checkpoints, read_metrics
from tests.utils import run_model_card_snippet
from training import train_srgan

REPO = Path(__file__).resolve().parents[2]
RECIPE = train_srgan.RECIPE_FILE


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Tiny variants laid out like hub_configs/srresnet-photos-x4 and srgan-photos-x4, with their recipes."""
    root = tmp_path_factory.mktemp("configs")
    for variant in ("srresnet-photos-x4", "srgan-photos-x4"):
        folder = root / variant
        folder.mkdir()
        shutil.copy(HUB_CONFIGS_DIR / variant / "model_index.json", folder)
        shutil.copy(HUB_CONFIGS_DIR / variant / RECIPE, folder)
        SRResNetGenerator(scale_factor=4, num_features=4, num_blocks=1).save_config(folder / "upscaler")
        if variant.startswith("srgan"):
            SRGANDiscriminator(num_features=4, num_stages=2, dense_features=8).save_config(folder / "discriminator")
    return root


def tiny_args(configs, stage, output_dir, *extra):
    return [
        "--stage", stage, "--model_config", str(configs / f"{stage}-photos-x4"), "--output_dir", str(output_dir),
        "--resolution", "16", "--train_batch_size", "4", "--num_train_patches", "16", "--max_train_steps", "4",
        "--checkpointing_steps", "2", "--validation_steps", "4", "--num_validation_images", "2",
        "--logging_steps", "1", "--report_to", "none", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def srresnet_run(configs, tmp_path_factory):
    from accelerate.state import AcceleratorState, GradientState, PartialState

    out = tmp_path_factory.mktemp("runs") / "srresnet"
    PartialState._reset_state()
    train_srgan.main(train_srgan.parse_args(tiny_args(configs, "srresnet", out)))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return out


def test_srresnet_stage_trains_saves_and_reloads(srresnet_run, tmp_path):
    out = srresnet_run
    for name in ("model_index.json", "README.md", "loss_curve.png", "upscaler/config.json", RECIPE):
        assert (out / name).is_file(), name
    assert not (out / "discriminator").exists()
    assert sorted(os.listdir(out / "samples")) == ["step_000004.png"]
    metrics = read_metrics(out)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 4 and all(np.isfinite(losses))
    (evaluation,) = [m for m in metrics if "eval/psnr_y" in m]
    assert evaluation["step"] == 4 and 20 < evaluation["eval/psnr_y"] < 40 and 20 < evaluation["eval/bicubic_psnr_y"]
    assert 0 < evaluation["eval/ssim_y"] <= 1
    assert json.loads((out / RECIPE).read_text()) == {
        "stage": "srresnet", "pixel_loss": "l1", "learning_rate": 5e-4, "adam_beta1": 0.9, "adam_beta2": 0.99,
        "lr_scheduler": "constant",
    }  # fmt: skip
    pipe = SuperResolutionPipeline.from_pretrained(out)
    assert pipe(torch.rand(1, 3, 5, 7), output_type="pt").images.shape == (1, 3, 20, 28)
    card = (out / "README.md").read_text()
    assert "pipe(image=image)" in card and "generator" not in card.split("```python")[1].split("```")[0]


def test_model_card_snippet_runs(srresnet_run, tmp_path):
    import custom_pipelines

    if not hasattr(custom_pipelines, "SuperResolutionPipeline"):  # the snippet imports it from the top level
        pytest.skip("custom_pipelines does not export SuperResolutionPipeline yet")
    assert run_model_card_snippet(srresnet_run, tmp_path).size == (451 * 4, 300 * 4)  # chelsea ×4


def test_srgan_stage_starts_from_the_srresnet_and_saves_both_networks(configs, srresnet_run, tmp_path):
    out = tmp_path / "srgan"
    args = train_srgan.parse_args(
        tiny_args(configs, "srgan", out, "--pretrained_model_name_or_path", str(srresnet_run),
                  "--adversarial_loss", "relativistic")
    )  # fmt: skip
    assert args.training_recipe == str(configs / "srgan-photos-x4" / RECIPE)  # the variant's, not the run's
    assert (args.learning_rate, args.adversarial_weight, args.content_loss) == (1e-4, 1e-3, "l1_ssim")
    train_srgan.main(args)
    metrics = [m for m in read_metrics(out) if "g_loss" in m]
    assert len(metrics) == 4
    for m in metrics:
        assert np.isfinite([m["g_loss"], m["d_loss"], m["content_loss"], m["adversarial_loss"]]).all()
        assert m["g_loss"] == pytest.approx(m["content_loss"] + 1e-3 * m["adversarial_loss"], rel=1e-5)
    start = load_file(srresnet_run / "upscaler" / "diffusion_pytorch_model.safetensors")
    tuned = load_file(out / "upscaler" / "diffusion_pytorch_model.safetensors")
    assert start.keys() == tuned.keys() and any(not torch.equal(start[k], tuned[k]) for k in start)
    assert SRGANDiscriminator.from_pretrained(out / "discriminator").config.num_stages == 2
    assert json.loads((out / RECIPE).read_text())["adversarial_loss"] == "relativistic"
    assert SuperResolutionPipeline.from_pretrained(out).scale_factor == 4


def test_resume_from_latest_continues_exactly(configs, tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_srgan.main(train_srgan.parse_args(tiny_args(configs, "srresnet", straight, "--validation_steps", "100")))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_srgan.main(
        train_srgan.parse_args(tiny_args(configs, "srresnet", resumed, "--max_train_steps", "2",
                                         "--validation_steps", "100"))
    )  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_srgan.main(
        train_srgan.parse_args(tiny_args(configs, "srresnet", resumed, "--resume_from_checkpoint", "latest",
                                         "--validation_steps", "100"))
    )  # fmt: skip
    assert [m["step"] for m in read_metrics(resumed) if "loss" in m] == [1, 2, 3, 4]
    a = load_file(straight / "upscaler" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "upscaler" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def parse(*flags):
    return train_srgan.parse_args(["--output_dir", "x", "--max_train_steps", "1", *flags])


def test_variants_recipes_apply_by_default():
    args = parse()
    assert args.stage == "srresnet" and args.model_config == "srresnet-photos-x4" and args.dataset_name == "photos"
    assert args.training_recipe == str(HUB_CONFIGS_DIR / "srresnet-photos-x4" / RECIPE)
    assert (args.learning_rate, args.resolution, args.pixel_loss) == (5e-4, 64, "l1")
    gan = parse("--model_config", "srgan-photos-x4", "--pretrained_model_name_or_path", "runs/x")
    assert gan.stage == "srgan" and (gan.learning_rate, gan.resolution) == (1e-4, 96)  # stage from the recipe
    assert parse("--stage", "srgan", "--pretrained_model_name_or_path", "r").model_config == "srgan-photos-x4"
    big = parse("--model_config", "srresnet-msrresnet-x4", "--learning_rate", "1e-4")
    assert (big.learning_rate, big.resolution, big.lr_scheduler) == (1e-4, 128, "cosine")  # the flag wins
    folder = parse("--train_data_dir", "my_photos")
    assert folder.dataset_name is None and folder.train_data_dir == "my_photos"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--stage", "srgan"], "--stage srgan starts from a trained SRResNet"),
        (["--content_loss", "vgg"], "--content_loss vgg needs --vgg_weights"),
        (["--content_loss", "l1_ssim", "--vgg_weights", "vgg.safetensors"], "--vgg_weights is used only with"),
        (["--adversarial_weight", "-1"], "--adversarial_weight must be >= 0"),
        (["--num_train_patches", "0"], "--num_train_patches must be a positive integer"),
        (["--model_config", "ddpm-tiny-8"], "names no SRResNetGenerator 'upscaler' component"),
        (["--stage", "srgan", "--pretrained_model_name_or_path", "r", "--gradient_accumulation_steps", "2"],
         "--gradient_accumulation_steps must be 1 for --stage srgan"),
    ],
)  # fmt: skip
def test_bad_flags_raise_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        parse(*flags)


def test_resolution_must_be_a_multiple_of_the_scale(configs, tmp_path):
    with pytest.raises(ValueError, match="--resolution .* multiple of scale_factor 4, got 18"):
        train_srgan.main(train_srgan.parse_args(tiny_args(configs, "srresnet", tmp_path / "x", "--resolution", "18")))


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_with_resume(configs, srresnet_run, tmp_path):
    from tests.training.processes import launch_two_processes

    out = tmp_path / "srgan2"
    args = tiny_args(configs, "srgan", out, "--pretrained_model_name_or_path", str(srresnet_run),
                     "--max_train_steps", "2", "--validation_steps", "100")  # fmt: skip
    summary = launch_two_processes("train_srgan.py", args)
    for name in ("generator", "discriminator"):
        ranks = summary["param_checksums"][name]
        assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept both ranks' weights identical
    assert [s for s, _ in list_checkpoints(out)] == [2]

    resume = [*args, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]  # the last flag wins
    summary = launch_two_processes("train_srgan.py", resume)
    assert summary["global_step"] == 4
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    steps = [m["step"] for m in read_metrics(out) if "g_loss" in m]
    assert steps == [1, 2, 3, 4]
    assert SuperResolutionPipeline.from_pretrained(out).scale_factor == 4


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(configs, srresnet_run, tmp_path):
    """The SRGAN stage (generator, discriminator, two optimizers) from the SRResNet run."""
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(configs, "srgan", out, "--pretrained_model_name_or_path", str(srresnet_run),
                         "--max_train_steps", "6", "--validation_steps", "6")  # fmt: skip

    files = ["upscaler/diffusion_pytorch_model.safetensors", "discriminator/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_srgan.py", args_for, tmp_path, files) == 3
