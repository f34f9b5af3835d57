import json
import logging
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
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, list_variants
from custom_pipelines.pipelines.pipeline_gan import GANPipeline
from custom_pipelines.pipelines.pipeline_stylegan import StyleGANPipeline
from custom_pipelines.training import list_checkpoints, read_metrics
from training import train_gan

REPO = Path(__file__).resolve().parents[2]
SIZES = {"channel_base": 64, "channel_max": 8}
RECIPE_OF = {"stylegan": "stylegan-digits-32", "progan": "progan-digits-32", "dcgan": "dcgan-digits-32"}
GAN_VARIANTS = [v for v in list_variants() if train_gan.family_of(HUB_CONFIGS_DIR / v) is not None]
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
    """Tiny model configs laid out like hub_configs/ variants, with the recipe of the family's digits variant."""
    root = tmp_path_factory.mktemp("configs")
    for family, (component, generator, discriminator) in TINY.items():
        folder = root / family
        index = {"_class_name": "x", component: [type(generator).__module__, type(generator).__name__]}
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(index))
        generator.save_config(folder / component)
        discriminator.save_config(folder / "discriminator")
        shutil.copy(HUB_CONFIGS_DIR / RECIPE_OF[family] / train_gan.RECIPE_FILE, folder)
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
    # the output is a variant folder too: the recipe it trained with, which fine-tuning from it reads first
    assert json.loads((out / "training_recipe.json").read_text()) == {
        "loss": "ns_r1", "learning_rate": 2e-3, "d_learning_rate": 2e-3, "adam_beta1": 0.0, "adam_beta2": 0.99,
        "n_critic": 1, "reg_interval": 1, "r1_gamma": 1.0,
    }  # fmt: skip
    finetune = train_gan.parse_args(
        tiny_args(configs, "dcgan", tmp_path / "ft", "--pretrained_model_name_or_path", str(out))
    )
    assert finetune.family.name == "stylegan" and finetune.training_recipe == str(out / "training_recipe.json")
    card = (out / "README.md").read_text()
    assert "pipe(batch_size=16, truncation_psi=0.7, generator=generator)" in card and "train_gan.py" in card


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
    from tests.training.processes import launch_two_processes

    out = tmp_path / family
    args = tiny_args(configs, family, out, "--max_train_steps", "4", "--phase_steps", "1", "--n_critic", "2")
    summary = launch_two_processes("train_gan.py", args)
    for name in ("generator", "discriminator"):
        ranks = summary["param_checksums"][name]
        assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept both ranks' weights identical
    assert [s for s, _ in list_checkpoints(out)] == [3]
    rng_files = {f for f in os.listdir(out / "checkpoint-3") if f.startswith("random_states")}
    assert rng_files == {"random_states_0.pkl", "random_states_1.pkl"}  # rank 1 wrote before rank 0 renamed

    # Resume the two-process run from its latest checkpoint (step 3) and go on to step 6.
    resume = [*args, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"]  # the last flag wins
    summary = launch_two_processes("train_gan.py", resume)
    assert summary["global_step"] == 6
    assert [s for s, _ in list_checkpoints(out)] == [3, 6]
    steps = [m["step"] for m in read_metrics(out)]
    assert steps[-1] == 6 and 4 in steps[steps.index(3) + 1 :]  # logged 4.. after the resume, not 1..


# ----- the variant's training recipe ----------------------------------------------------------------------------
def parse(*flags, model_config="dcgan-digits-32"):
    return train_gan.parse_args(
        ["--model_config", model_config, "--dataset_name", "digits", "--output_dir", "x", "--max_train_steps", "1",
         *flags]
    )  # fmt: skip


def recipe_flags(args):
    return {k: getattr(args, k) for k in ("loss", "learning_rate", "adam_beta1", "adam_beta2", "n_critic")}


@pytest.mark.parametrize("variant", GAN_VARIANTS)
def test_every_variant_trains_with_its_recipe_by_default(variant):
    recipe = json.loads((HUB_CONFIGS_DIR / variant / train_gan.RECIPE_FILE).read_text())
    args = parse(model_config=variant)
    assert {key: getattr(args, key) for key in recipe} == recipe
    assert args.training_recipe == str(HUB_CONFIGS_DIR / variant / train_gan.RECIPE_FILE)
    assert args.d_learning_rate == recipe.get("d_learning_rate", recipe["learning_rate"])


def test_the_demo_flags_are_the_dcgan_digits_16_recipe():
    demo = ["--loss", "ns_r1", "--learning_rate", "3e-4", "--adam_beta1", "0.5", "--adam_beta2", "0.999",
            "--r1_gamma", "0.1"]  # fmt: skip
    assert vars(parse(*demo, model_config="dcgan-digits-16")) == vars(parse(model_config="dcgan-digits-16"))


def test_a_run_without_flags_builds_its_optimizers_from_the_recipe(configs, tmp_path, monkeypatch):
    optimizers = []
    make_optimizer = train_gan.make_optimizer
    monkeypatch.setattr(
        train_gan, "make_optimizer", lambda *a: optimizers.append(make_optimizer(*a)) or optimizers[-1]
    )
    out = tmp_path / "dcgan"
    train_gan.main(train_gan.parse_args(tiny_args(configs, "dcgan", out)))  # recipe: WGAN-GP, Adam(1e-4, (0, 0.9))
    assert [type(o).__name__ for o in optimizers] == ["AdamW", "AdamW"]
    assert [(g["initial_lr"], g["betas"]) for o in optimizers for g in o.param_groups] == [(1e-4, (0.0, 0.9))] * 2
    metrics = read_metrics(out)
    assert all("gradient_penalty" in m for m in metrics)
    assert [m["step"] for m in metrics if "g_loss" in m] == [5]  # n_critic 5: one generator step in six
    assert json.loads((out / "training_recipe.json").read_text())["gp_lambda"] == 10.0


def test_command_line_flags_win_over_the_recipe():
    args = parse("--learning_rate", "5e-4", "--n_critic", "2", "--gp_lambda", "1")
    assert recipe_flags(args) == {"loss": "wgan_gp", "learning_rate": 5e-4, "adam_beta1": 0.0, "adam_beta2": 0.9,
                                  "n_critic": 2}  # fmt: skip
    assert args.gp_lambda == 1.0 and args.d_learning_rate == 5e-4


def test_another_loss_leaves_the_recipe_out(caplog):
    with caplog.at_level(logging.WARNING):
        args = parse("--loss", "wgan")  # the recipe is tuned for WGAN-GP
    assert "recipe not used" in caplog.text and args.training_recipe is None
    # RMSProp at the WGAN paper's rate, its five critic steps, the generic betas
    assert recipe_flags(args) == {"loss": "wgan", "learning_rate": 5e-5, "adam_beta1": 0.5, "adam_beta2": 0.999,
                                  "n_critic": 5}  # fmt: skip


@pytest.mark.parametrize("loss, n_critic, learning_rate", [(None, 1, 2e-4), ("wgan_gp", 5, 2e-4), ("wgan", 5, 5e-5)])
def test_no_recipe_gives_generic_defaults_and_the_objectives_n_critic(tmp_path, caplog, loss, n_critic, learning_rate):
    folder = tmp_path / "no-recipe"
    shutil.copytree(HUB_CONFIGS_DIR / "dcgan-digits-16", folder, ignore=shutil.ignore_patterns("training_recipe.json"))
    with caplog.at_level(logging.WARNING):
        args = parse(*(["--loss", loss] if loss else []), model_config=str(folder))
    assert f"has no {train_gan.RECIPE_FILE}: generic GAN defaults" in caplog.text
    assert recipe_flags(args) == {"loss": loss or "ns_r1", "learning_rate": learning_rate, "adam_beta1": 0.5,
                                  "adam_beta2": 0.999, "n_critic": n_critic}  # fmt: skip


def test_pretrained_folder_recipe_then_the_same_familys_variant(tmp_path):
    pretrained = tmp_path / "pretrained"  # parse_args reads only model_index.json and the recipe
    pretrained.mkdir()
    shutil.copy(HUB_CONFIGS_DIR / "dcgan-digits-16" / "model_index.json", pretrained)
    flags = ["--pretrained_model_name_or_path", str(pretrained)]
    assert parse(*flags).training_recipe == str(HUB_CONFIGS_DIR / "dcgan-digits-32" / train_gan.RECIPE_FILE)
    assert parse(*flags, model_config="stylegan-digits-32").training_recipe is None  # another family's recipe
    (pretrained / train_gan.RECIPE_FILE).write_text(json.dumps({"loss": "wgan", "n_critic": 3}))
    args = parse(*flags)
    assert args.training_recipe == str(pretrained / train_gan.RECIPE_FILE)
    assert (args.loss, args.n_critic, args.learning_rate) == ("wgan", 3, 5e-5)


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"loss": "ns_r1", "lr": 1e-3}, "'lr' is not a flag a recipe can set"),
        ({"output_dir": "elsewhere"}, "'output_dir' is not a flag a recipe can set"),
        ({"n_critic": 2.5}, "'n_critic': 2.5 is not a valid --n_critic value"),
        ({"learning_rate": "3e-4"}, "'learning_rate': '3e-4' is not a valid --learning_rate value"),
        ({"use_ema": 1}, "'use_ema': 1 is not a valid --use_ema value"),
        ({"lr_scheduler": "step"}, "is not a valid --lr_scheduler value \\(one of"),
        ({"loss": "hinge"}, "--loss must be one of \\['ns_r1', 'wgan', 'wgan_gp'\\]"),
        (["loss", "ns_r1"], "must hold one JSON object"),
    ],
)
def test_a_bad_recipe_raises_naming_the_file_and_key(tmp_path, recipe, message):
    folder = tmp_path / "variant"
    shutil.copytree(HUB_CONFIGS_DIR / "dcgan-digits-16", folder)
    (folder / train_gan.RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match=message) as err:
        parse(model_config=str(folder))
    assert "loss must be" in message or str(folder / train_gan.RECIPE_FILE) in str(err.value)


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(configs, tmp_path):
    """ProGAN: its growing stage and fade-in are part of what must come back."""
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(configs, "progan", out, "--checkpointing_steps", "2", "--phase_steps", "2", "--n_critic", "2")

    files = ["gan_generator/diffusion_pytorch_model.safetensors", "discriminator/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_gan.py", args_for, tmp_path, files) == 3
