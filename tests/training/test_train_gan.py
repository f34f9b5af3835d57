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

from custom_pipelines.gan.dcgan import DCGANCritic, DCGANGenerator
from custom_pipelines.gan.progan import ProGANDiscriminator, ProGANGenerator
from custom_pipelines.gan.stylegan import StyleGANDiscriminator, StyleGANGenerator
from custom_pipelines.gan.training_utils import progan_reals
from custom_pipelines.pipelines.pipeline_gan import GANPipeline
from custom_pipelines.pipelines.pipeline_stylegan import StyleGANPipeline
from custom_pipelines.training import list_checkpoints, read_metrics
from training import train_gan

REPO = Path(__file__).resolve().parents[2]
SIZES = {"channel_base": 64, "channel_max": 8}
TINY = {  # family → (pipeline component, generator, discriminator), all 8×8 grayscale
    "stylegan": (
        "stylegan",
        StyleGANGenerator(8, 1, z_dim=8, w_dim=8, n_mapping_layers=2, **SIZES),
        StyleGANDiscriminator(8, 1, **SIZES),
    ),
    "progan": ("gan_generator", ProGANGenerator(8, 1, z_dim=8, **SIZES), ProGANDiscriminator(8, 1, **SIZES)),
    "dcgan": ("gan_generator", DCGANGenerator(8, 1, z_dim=8, base_channels=4), DCGANCritic(8, 1, base_channels=4)),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Tiny model configs laid out like hub_configs/ variants."""
    root = tmp_path_factory.mktemp("configs")
    for family, (component, generator, discriminator) in TINY.items():
        folder = root / family
        index = {"_class_name": "x", component: [type(generator).__module__, type(generator).__name__]}
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(index))
        generator.save_config(folder / component)
        discriminator.save_config(folder / "discriminator")
    return root


def tiny_args(configs, family, output_dir, *extra):
    return [
        "--model_config", str(configs / family), "--dataset_name", "digits", "--output_dir", str(output_dir),
        "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "6", "--checkpointing_steps", "3",
        "--validation_steps", "6", "--num_validation_images", "4", "--logging_steps", "1", "--report_to", "none",
        *extra,
    ]  # fmt: skip


def test_stylegan_trains_saves_and_reloads(configs, tmp_path):
    out = tmp_path / "run"
    train_gan.main(train_gan.parse_args(tiny_args(configs, "stylegan", out)))
    for name in ("model_index.json", "README.md", "loss_curve.png", "metrics.jsonl", "discriminator/config.json"):
        assert (out / name).is_file(), name
    assert sorted(os.listdir(out / "samples")) == ["step_000006.png"]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["d_loss"]) and m["r1_penalty"] > 0 and np.isfinite(m["g_loss"]) for m in metrics)
    pipe = StyleGANPipeline.from_pretrained(out)
    assert pipe.stylegan.mapping.w_avg.abs().sum() > 0  # tracked during training and saved
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    assert StyleGANDiscriminator.from_pretrained(out / "discriminator").config.resolution == 8


def test_resume_from_latest_continues_exactly(configs, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_gan.main(train_gan.parse_args(tiny_args(configs, "stylegan", straight)))
    train_gan.main(train_gan.parse_args(tiny_args(configs, "stylegan", resumed)))
    shutil.rmtree(resumed / "checkpoint-6")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_gan.main(train_gan.parse_args(tiny_args(configs, "stylegan", resumed, "--resume_from_checkpoint", "latest")))
    assert [m["step"] for m in read_metrics(resumed)][-3:] == [4, 5, 6]
    for folder in ("stylegan", "discriminator"):
        a = load_file(straight / folder / "diffusion_pytorch_model.safetensors")
        b = load_file(resumed / folder / "diffusion_pytorch_model.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_progan_grows_to_the_final_resolution(configs, tmp_path):
    out = tmp_path / "progan"
    train_gan.main(train_gan.parse_args(tiny_args(configs, "progan", out, "--phase_steps", "2", "--n_critic", "2")))
    metrics = read_metrics(out)
    assert all("gradient_penalty" in m for m in metrics)  # ProGAN's default objective is WGAN-GP
    assert [("g_loss" in m) for m in metrics] == [False, True] * 3
    pipe = GANPipeline.from_pretrained(out)
    assert isinstance(pipe.gan_generator, ProGANGenerator) and pipe.gan_generator.current_resolution == 8
    assert pipe(output_type="np").images.shape == (1, 8, 8, 1)


def test_progan_schedule():
    # phase_steps 2, stages 4², 8², 16²: stabilize 4², fade in 8², stabilize 8², fade in 16², then 16² for good
    schedule = [train_gan.progan_phase(step, 2, 2) for step in range(10)]
    assert schedule == [
        (0, 1.0),
        (0, 1.0),
        (1, 0.0),
        (1, 0.5),
        (1, 1.0),
        (1, 1.0),
        (2, 0.0),
        (2, 0.5),
        (2, 1.0),
        (2, 1.0),
    ]
    reals = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(progan_reals(reals, 1, 1.0), reals)
    low = torch.nn.functional.avg_pool2d(reals, 2)
    torch.testing.assert_close(progan_reals(reals, 0, 1.0), low)
    torch.testing.assert_close(progan_reals(reals, 1, 0.0), low.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_dcgan_wgan_keeps_critic_weights_clipped(configs, tmp_path):
    out = tmp_path / "wgan"
    args = train_gan.parse_args(tiny_args(configs, "dcgan", out, "--loss", "wgan", "--clip_value", "0.0625"))
    assert args.learning_rate == 5e-5  # RMSProp at the WGAN paper's rate
    train_gan.main(args)
    critic = load_file(out / "discriminator" / "diffusion_pytorch_model.safetensors")
    assert max(t.abs().max().item() for t in critic.values()) <= 0.0625
    assert all("wasserstein_estimate" in m and "gradient_penalty" not in m for m in read_metrics(out))
    assert isinstance(GANPipeline.from_pretrained(out).gan_generator, DCGANGenerator)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "hinge"], "--loss must be one of"),
        (["--n_critic", "0"], "n_critic"),
        (["--gradient_accumulation_steps", "2"], "gradient_accumulation_steps"),
        (["--style_mixing_prob", "1.5"], "style_mixing_prob"),
        (["--train_batch_size", "6"], "minibatch-std group size 4"),
        (["--resolution", "16"], "resolution must be the model's 8"),
        (["--model_config", "ddpm-tiny-8"], "names no GAN generator"),
    ],
)
def test_bad_flags_raise_clear_errors(configs, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_gan.main(train_gan.parse_args(tiny_args(configs, "stylegan", tmp_path / "x", *extra)))


def test_progan_needs_enough_steps_to_grow(configs, tmp_path):
    with pytest.raises(ValueError, match="max_train_steps >= 201"):
        train_gan.main(train_gan.parse_args(tiny_args(configs, "progan", tmp_path / "x", "--phase_steps", "100")))


def test_script_reports_errors_without_traceback(configs, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "training" / "train_gan.py"),
        *tiny_args(configs, "dcgan", tmp_path / "c", "--loss", "x"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0 and "--loss must be one of" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", ["stylegan", "progan"])
def test_accelerate_launch_two_cpu_processes(configs, tmp_path, family):
    out = tmp_path / family
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO / "training" / "train_gan.py"),
        *tiny_args(configs, family, out, "--max_train_steps", "4", "--phase_steps", "1", "--n_critic", "2"),
        "--ddp_timeout", "120",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    for name in ("generator", "discriminator"):
        ranks = summary["param_checksums"][name]
        assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept both ranks' weights identical
    assert [s for s, _ in list_checkpoints(out)] == [3]
    rng_files = {f for f in os.listdir(out / "checkpoint-3") if f.startswith("random_states")}
    assert rng_files == {"random_states_0.pkl", "random_states_1.pkl"}  # rank 1 wrote before rank 0 renamed

    # Resume the two-process run from its latest checkpoint (step 3) and go on to step 6.
    resume = [*cmd, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"]  # the last flag wins
    result = subprocess.run(resume, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["world_size"] == 2
    assert [s for s, _ in list_checkpoints(out)] == [3, 6]
    steps = [m["step"] for m in read_metrics(out)]
    assert steps[-1] == 6 and 4 in steps[steps.index(3) + 1 :]  # logged 4.. after the resume, not 1..
