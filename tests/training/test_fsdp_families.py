"""FSDP beyond one UNet: a GAN (two FSDP roots, two optimizers, R1's double backward through a sharded
discriminator) and text-conditioned latent diffusion (a frozen VAE and text encoder beside the sharded UNet), each on
two CPU processes against the same run under DDP; the saved pipelines are whole safetensors that load and sample; a
GAN killed mid-run resumes bit-identically from its sharded checkpoint."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from custom_pipelines.gan.dcgan import DCGANCritic, DCGANGenerator
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR
from tests.training.processes import launch_two_processes
from tests.training.test_fsdp import launch_fsdp, summary_of
from tests.training.test_train_cyclegan import config as cyclegan_config  # noqa: F401 (the tiny CycleGAN)
from tests.training.test_train_ldm import configs as ldm_configs  # noqa: F401 (fixtures of the tiny LDM)
from tests.training.test_train_ldm import tiny_args
from tests.training.test_train_ldm import vae_dir as ldm_vae_dir  # noqa: F401
from tests.training.test_train_srgan import configs as sr_configs  # noqa: F401 (tiny SRResNet / SRGAN variants)
from tests.training.test_train_srgan import tiny_args as sr_args
from tests.training.test_train_vae import config as vae_config  # noqa: F401 (the tiny VAE + PatchGAN variant)
from tests.training.test_train_vae import tiny_args as vae_args

GENERATOR_FILE = os.path.join("gan_generator", "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def dcgan_config(tmp_path_factory):
    """A tiny DCGAN variant (8×8 grey) with dcgan-digits-16's recipe: non-saturating loss + R1."""
    folder = tmp_path_factory.mktemp("configs") / "dcgan"
    folder.mkdir()
    generator, critic = DCGANGenerator(8, 1, z_dim=8, base_channels=4), DCGANCritic(8, 1, base_channels=4)
    index = {"_class_name": "GANPipeline", "gan_generator": [type(generator).__module__, type(generator).__name__]}
    (folder / "model_index.json").write_text(json.dumps(index))
    generator.save_config(folder / "gan_generator")
    critic.save_config(folder / "discriminator")
    shutil.copy(HUB_CONFIGS_DIR / "dcgan-digits-16" / "training_recipe.json", folder)
    return folder


@pytest.mark.slow
def test_the_autoencoder_and_its_patchgan_train_sharded_like_ddp(vae_config, tmp_path):  # noqa: F811
    """train_vae.py's two models (AutoencoderKL behind its training forward, a PatchGAN with BatchNorm from step 3):
    sharded, the losses as under DDP (within 1e-4 until the discriminator starts, 1% after), an AutoencoderKL folder
    that loads and reconstructs. The adaptive GAN weight differs by design: under FSDP the decoder's last-layer
    gradients it compares are reduce-scattered shards (the whole batch's); DDP's `autograd.grad` sees the rank's own
    batch."""
    from diffusers import AutoencoderKL

    fsdp_out, ddp_out = tmp_path / "fsdp", tmp_path / "ddp"
    result = launch_fsdp("train_vae.py", [*vae_args(vae_config, fsdp_out), "--mixed_precision", "no", "--seed", "0"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(summary_of(fsdp_out)["param_shard_numel"]) == ["discriminator", "vae"]
    launch_two_processes("train_vae.py", [*vae_args(vae_config, ddp_out), "--mixed_precision", "no", "--seed", "0"])
    a, b = ([row for row in metrics(out) if "vae_loss" in row] for out in (fsdp_out, ddp_out))
    assert len(a) == len(b) == 6 and sum("d_loss" in row for row in a) >= 3
    for x, y in zip(a, b):
        # once the discriminator is on, the adaptive weight moves the two decoders apart, a little
        tolerance = 1e-2 if "d_loss" in y else 1e-4
        for key in ("l1", "ssim_loss", "rec_loss", "kl", "d_loss"):
            if key in y:
                assert abs(x[key] - y[key]) < tolerance * max(1.0, abs(y[key])), (key, x, y)
        assert np.isfinite(x["vae_loss"]) and x.get("adaptive_weight", 1.0) > 0
    vae = AutoencoderKL.from_pretrained(fsdp_out)
    with torch.no_grad():
        out = vae(torch.zeros(1, 1, 16, 16)).sample
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


def gan_args(config, output_dir, *extra):
    return [
        "--model_config", str(config), "--dataset_name", "digits", "--output_dir", str(output_dir),
        "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "6", "--checkpointing_steps", "2",
        "--validation_steps", "6", "--num_validation_images", "4", "--logging_steps", "1", "--report_to", "none",
        "--mixed_precision", "no", "--seed", "0", "--ddp_timeout", "120", *extra,
    ]  # fmt: skip


def metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def gan_fsdp_run(dcgan_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "fsdp"
    result = launch_fsdp("train_gan.py", gan_args(dcgan_config, out))
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_a_gan_trains_sharded_with_r1_and_saves_a_whole_generator(gan_fsdp_run):
    from custom_pipelines.pipelines.pipeline_gan import GANPipeline

    summary = summary_of(gan_fsdp_run)
    assert summary["distributed_type"] == "FSDP" and summary["world_size"] == 2
    for name in ("generator", "discriminator"):  # two FSDP roots, each split over the ranks
        shards = summary["param_shard_numel"][name]
        assert len(shards) == 2 and 0 < min(shards) and max(shards) < sum(shards), (name, shards)
    rows = metrics(gan_fsdp_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # R1 went through the discriminator's double backward on every step (reg_interval 1) and is a real penalty
    assert all(r["r1_penalty"] > 0 and np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows)
    pipe = GANPipeline.from_pretrained(gan_fsdp_run)
    saved = load_file(gan_fsdp_run / GENERATOR_FILE)
    assert saved.keys() == pipe.gan_generator.state_dict().keys()  # whole tensors, no shard
    images = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (3, 8, 8, 1) and np.isfinite(images).all() and images.std() > 0


@pytest.mark.slow
def test_a_sharded_gan_trains_like_ddp(gan_fsdp_run, dcgan_config, tmp_path):
    """The same six steps under DDP: the two differ only by the order of gradient sums (reduce-scatter vs
    all-reduce), so every logged loss and the saved generator agree to float32 rounding amplified by Adam."""
    ddp = tmp_path / "ddp"
    summary = launch_two_processes("train_gan.py", gan_args(dcgan_config, ddp))
    assert summary["distributed_type"] == "MULTI_CPU"
    for a, b in zip(metrics(gan_fsdp_run), metrics(ddp), strict=True):
        for key in ("d_loss", "g_loss", "r1_penalty"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(b[key])), (key, a, b)
    got, expected = load_file(gan_fsdp_run / GENERATOR_FILE), load_file(ddp / GENERATOR_FILE)
    worst = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-4, worst


@pytest.mark.slow
def test_a_sharded_gan_killed_mid_run_resumes_bit_identical(gan_fsdp_run, dcgan_config, tmp_path):
    out = tmp_path / "killed"
    killed = launch_fsdp("train_gan.py", gan_args(dcgan_config, out), fault="checkpoint:4")
    assert killed.returncode != 0 and "SIGKILL at checkpoint" in killed.stderr, killed.stderr[-3000:]
    assert "checkpoint-2" in os.listdir(out) and "checkpoint-4" not in os.listdir(out)
    resumed = launch_fsdp("train_gan.py", gan_args(dcgan_config, out, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    got, expected = load_file(out / GENERATOR_FILE), load_file(gan_fsdp_run / GENERATOR_FILE)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert metrics(out)[-2:] == metrics(gan_fsdp_run)[-2:]


@pytest.mark.slow
def test_text_latent_diffusion_trains_sharded_like_ddp(ldm_vae_dir, ldm_configs, tmp_path):  # noqa: F811
    """The UNet sharded, the frozen VAE and text encoder replicated: the same losses as DDP, and a saved pipeline
    that loads and answers prompts."""
    from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline

    fsdp_out, ddp_out = tmp_path / "fsdp", tmp_path / "ddp"
    result = launch_fsdp("train_ldm.py", [*tiny_args(ldm_vae_dir, ldm_configs, fsdp_out), "--ddp_timeout", "120"])
    assert result.returncode == 0, result.stderr[-4000:]
    summary = summary_of(fsdp_out)
    assert summary["distributed_type"] == "FSDP" and sorted(summary["param_shard_numel"]) == ["unet"]
    launch_two_processes("train_ldm.py", [*tiny_args(ldm_vae_dir, ldm_configs, ddp_out), "--ddp_timeout", "120"])
    a, b = metrics(fsdp_out), metrics(ddp_out)
    assert len(a) == len(b) == 4 and max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < 1e-4, (a, b)
    pipe = LatentDiffusionPipeline.from_pretrained(fsdp_out)
    images = pipe(prompt=["a handwritten digit three"] * 2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


@pytest.mark.slow
def test_super_resolution_trains_sharded(sr_configs, tmp_path):  # noqa: F811
    from custom_pipelines.pipelines.pipeline_super_resolution import SuperResolutionPipeline

    out = tmp_path / "sr"
    result = launch_fsdp("train_srgan.py", [*sr_args(sr_configs, "srresnet", out), "--mixed_precision", "no"])
    assert result.returncode == 0, result.stderr[-4000:]
    shards = summary_of(out)["param_shard_numel"]["generator"]
    assert len(shards) == 2 and max(shards) < sum(shards)
    upscaled = SuperResolutionPipeline.from_pretrained(out)(image=torch.zeros(1, 3, 4, 4), output_type="np").images
    assert upscaled.shape == (1, 16, 16, 3) and np.isfinite(upscaled).all()


def test_cyclegan_under_fsdp_is_refused_with_the_reason(cyclegan_config, tmp_path):  # noqa: F811
    from tests.training.test_train_cyclegan import tiny_args as cyclegan_args

    out = tmp_path / "cyclegan"
    result = launch_fsdp("train_cyclegan.py", cyclegan_args(cyclegan_config, out))
    assert result.returncode != 0 and "--use_fsdp: train_cyclegan.py calls its discriminators" in result.stderr
    assert not (out / "model_index.json").exists()
