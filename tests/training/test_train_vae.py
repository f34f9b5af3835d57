"""train_vae.py: a few steps in-process, the measured scaling_factor, save → from_pretrained, resume, 2 processes."""

import importlib.util
import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from custom_pipelines.gan.patchgan import PatchGANDiscriminator
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, load_component_config
from custom_pipelines.training import read_metrics
from custom_pipelines.training.recipe import read_recipe
from tests.utils import run_model_card_snippet
from training import train_vae

REPO = Path(__file__).resolve().parents[2]
# variant → (factor f, latent channels, image size): the 32×32 f=4 CPU models and the LDM paper's KL-f4/f8
VAE_VARIANTS = {
    "vae-digits-32-f4": (4, 4, 32), "vae-faces-32-f4": (4, 4, 32), "vae-ldm-kl-f4": (4, 3, 256),
    "vae-ldm-kl-f8": (8, 4, 256),
}  # fmt: skip
TINY_VAE = {
    "block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 2, "sample_size": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
}  # fmt: skip
RUN_LENGTH_KEYS = ("max_train_steps", "validation_steps", "checkpointing_steps", "resolution")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A tiny f=2 autoencoder for 16×16 images laid out like the vae-digits-32-f4 variant, with its loss recipe
    (the variant's run length and resolution left out)."""
    folder = tmp_path_factory.mktemp("vae-tiny")
    vae = AutoencoderKL.from_config({**load_component_config("vae-digits-32-f4", "vae"), **TINY_VAE})
    vae.save_config(folder / "vae")
    PatchGANDiscriminator(1, 4, 2, "batch").save_config(folder / "discriminator")
    recipe = json.loads((HUB_CONFIGS_DIR / "vae-digits-32-f4" / "training_recipe.json").read_text())
    recipe = {k: v for k, v in recipe.items() if k not in RUN_LENGTH_KEYS}
    (folder / "training_recipe.json").write_text(json.dumps(recipe))
    return folder


def tiny_args(config, output_dir, *extra):
    return [
        "--model_config", str(config), "--dataset_name", "digits", "--output_dir", str(output_dir),
        "--train_batch_size", "8", "--max_train_samples", "40", "--heldout_images", "8", "--max_train_steps", "6",
        "--checkpointing_steps", "3", "--validation_steps", "6", "--num_validation_images", "4",
        "--logging_steps", "1", "--report_to", "none", "--disc_start", "3", "--lr_warmup_steps", "0",
        *extra,
    ]  # fmt: skip


def test_trains_measures_scale_saves_and_reloads(config, tmp_path):
    out = tmp_path / "run"
    args = train_vae.parse_args(tiny_args(config, out))
    assert args.training_recipe == str(config / "training_recipe.json") and args.kl_weight == 1e-6
    train_vae.main(args)
    metrics = read_metrics(out)
    train_rows = [m for m in metrics if "vae_loss" in m]
    assert [m["step"] for m in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [("d_loss" in m) for m in train_rows] == [False, False, False, True, True, True]  # steps 3..5
    assert all(m["adaptive_weight"] > 0 for m in train_rows if "g_loss" in m)
    val = [m for m in metrics if "val/psnr" in m]
    assert len(val) == 1 and val[0]["step"] == 6 and 0 < val[0]["val/ssim"] <= 1
    vae = AutoencoderKL.from_pretrained(out).eval()
    saved = load_file(out / "diffusion_pytorch_model.safetensors")
    for name, tensor in vae.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert PatchGANDiscriminator.from_pretrained(out / "discriminator").config.in_channels == 1
    # scaling_factor = 1/std of the encoded training latents (posterior samples; statistical tolerance)
    train_set, _ = train_vae.split_heldout(_dataset(args), 8, args.seed)
    images = train_vae.image_tensors(train_set, args, 16, 1)
    with torch.no_grad():
        z = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(1))
    assert vae.config.scaling_factor == pytest.approx(1.0 / z.double().std().item(), rel=0.03)
    report = json.loads((out / train_vae.METRICS_JSON).read_text())
    assert report["scaling_factor"] == vae.config.scaling_factor and report["latent_shape"] == [2, 8, 8]
    assert json.loads((out / "training_recipe.json").read_text())["disc_start"] == 3
    grid = Image.open(out / train_vae.RECONSTRUCTIONS_PNG)
    assert grid.mode == "L" and grid.width > grid.height  # 4 input | reconstruction tiles, twice as wide as tall
    card = (out / "README.md").read_text()
    assert "AutoencoderKL.from_pretrained" in card and "train_vae.py" in card
    image = run_model_card_snippet(out, tmp_path)
    assert image.size == (16, 16) and image.mode == "L"
    # the benchmark rebuilds the same held-out split from reconstruction_metrics.json: the same numbers
    rows = _vae_quality().main(_vae_quality().parse_args(["--runs", str(out), "--output_dir", str(tmp_path / "vq")]))
    assert rows[0]["vae"]["psnr"] == pytest.approx(report["heldout_psnr"], rel=1e-5)
    assert rows[0]["heldout_images"] == 8 and rows[0]["f"] == 2 and 0 < rows[0]["area_bicubic"]["ssim"] <= 1


def _vae_quality():
    spec = importlib.util.spec_from_file_location("vae_quality", REPO / "benchmarks" / "vae_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset(args):
    from custom_pipelines.training.data import load_train_dataset

    return load_train_dataset(args, 16)


def test_resume_from_latest_continues_exactly(config, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_vae.main(train_vae.parse_args(tiny_args(config, straight)))
    train_vae.main(train_vae.parse_args(tiny_args(config, resumed)))
    shutil.rmtree(resumed / "checkpoint-6")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_vae.main(train_vae.parse_args(tiny_args(config, resumed, "--resume_from_checkpoint", "latest")))
    assert [m["step"] for m in read_metrics(resumed) if "vae_loss" in m][-3:] == [4, 5, 6]
    for name in ("diffusion_pytorch_model.safetensors", "discriminator/diffusion_pytorch_model.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    a, b = (json.loads((d / "config.json").read_text())["scaling_factor"] for d in (straight, resumed))
    assert a == pytest.approx(b, rel=1e-6)


def test_finetune_from_the_output_reads_its_recipe(config, tmp_path):
    out = tmp_path / "run"
    train_vae.main(train_vae.parse_args(tiny_args(config, out, "--max_train_steps", "2", "--no-store_shift_factor")))
    assert json.loads((out / "config.json").read_text())["shift_factor"] is None  # what SD pipelines expect
    args = train_vae.parse_args(tiny_args(config, tmp_path / "ft", "--pretrained_model_name_or_path", str(out)))
    assert args.training_recipe == str(out / "training_recipe.json")
    vae, disc = train_vae.build_models(args)
    assert vae.config.block_out_channels == [8, 16] and disc.config.base_channels == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kl_weight", "-1"], "--kl_weight must be >= 0"),
        (["--heldout_images", "0"], "--heldout_images must be a positive integer"),
        (["--resolution", "15"], "divisible by the autoencoder's factor 2"),
        (["--lpips_backbone", "/no/such/file"], "--lpips_backbone"),
        (["--push_to_hub", "--hub_model_id", "a/b"], "--push_to_hub is not supported"),
        (["--model_config", "ddpm-tiny-8"], "holds no AutoencoderKL|has no vae/config.json"),
    ],
)
def test_bad_flags_raise_clear_errors(config, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_vae.main(train_vae.parse_args(tiny_args(config, tmp_path / "x", *extra)))


@pytest.mark.parametrize("variant", VAE_VARIANTS)
def test_variants_build_and_keys_match(variant):
    folder = HUB_CONFIGS_DIR / variant
    assert {p.name for p in folder.iterdir()} == {"vae", "discriminator", "training_recipe.json"}
    for name, cls in (("vae", AutoencoderKL), ("discriminator", PatchGANDiscriminator)):
        config = load_component_config(variant, name)
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(config) - {"_class_name", "_diffusers_version"} == params
        with torch.device("meta"):
            model = cls.from_config(config)
        if name == "vae":
            shape = (train_vae.downsampling_factor(model), model.config.latent_channels, model.config.sample_size)
            assert shape == VAE_VARIANTS[variant]
        else:
            assert model.config.in_channels == load_component_config(variant, "vae")["out_channels"]
    recipe = read_recipe(folder / "training_recipe.json", train_vae.build_parser())
    assert recipe["kl_weight"] == 1e-6 and recipe["disc_start"] > 0


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_and_resume(config, tmp_path):
    from tests.training.processes import launch_two_processes

    out = tmp_path / "ddp"

    def launch(*extra):
        return launch_two_processes("train_vae.py", tiny_args(config, out, "--disc_start", "1", *extra))

    summary = launch("--max_train_steps", "4", "--checkpointing_steps", "2")
    for name in ("vae", "discriminator"):
        ranks = summary["param_checksums"][name]
        assert len(ranks) == 2 and ranks[0] == ranks[1]
    summary = launch("--max_train_steps", "6", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    assert summary["global_step"] == 6 and summary["param_checksums"]["vae"][0] == summary["param_checksums"]["vae"][1]
    assert [m["step"] for m in read_metrics(out) if "vae_loss" in m][-2:] == [5, 6]


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(config, tmp_path):
    """VAE, discriminator, both optimizers and the discriminator start come back; the final save (the folder is
    the VAE) is all or nothing."""
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(config, out, "--checkpointing_steps", "2")

    files = ["diffusion_pytorch_model.safetensors", "discriminator/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_vae.py", args_for, tmp_path, files, marker="config.json") == 3
