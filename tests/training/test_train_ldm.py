"""training/train_ldm.py: tiny in-process runs (text, class, unconditional; cached latents) save a
LatentDiffusionPipeline that reloads and samples, resume continues exactly, bad flags raise; a two-process
`accelerate launch` with resume."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file

from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, load_component_config
from custom_pipelines.pipelines.pipeline_latent_diffusion import LatentDiffusionPipeline
from custom_pipelines.training import list_checkpoints, read_metrics
from tests.utils import run_model_card_snippet
from training import train_ldm

REPO = Path(__file__).resolve().parents[2]
NARROW = {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4}


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A "trained" VAE folder as train_vae.py leaves it (config.json + weights at the top): f = 4, 1 channel."""
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    config = {**load_component_config("ldm-digits-32", "vae"), "block_out_channels": [8, 16, 16], "norm_num_groups": 4}
    AutoencoderKL.from_config({**config, "sample_size": 16, "scaling_factor": 0.8}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Tiny variants laid out like hub_configs/ldm-digits-32 and ldm-text-digits-32."""
    root = tmp_path_factory.mktemp("configs")
    for variant, cls in (("ldm-digits-32", UNet2DModel), ("ldm-text-digits-32", UNet2DConditionModel)):
        folder = root / variant
        (folder / "scheduler").mkdir(parents=True)
        (folder / "model_index.json").write_text((HUB_CONFIGS_DIR / variant / "model_index.json").read_text())
        scheduler = HUB_CONFIGS_DIR / variant / "scheduler" / "scheduler_config.json"
        (folder / "scheduler" / "scheduler_config.json").write_text(scheduler.read_text())
        config = {**load_component_config(variant, "unet"), **NARROW}
        cls.from_config(config).save_config(folder / "unet")
    return root


def tiny_args(vae_dir, configs, output_dir, conditioning="text", *extra):
    variant = "ldm-text-digits-32" if conditioning == "text" else "ldm-digits-32"
    return [
        "--dataset_name", "digits", "--vae_name_or_path", str(vae_dir), "--model_config", str(configs / variant),
        "--conditioning", conditioning, "--output_dir", str(output_dir), "--resolution", "16",
        "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "4", "--max_token_length", "8",
        "--checkpointing_steps", "2", "--validation_steps", "4", "--num_validation_images", "4",
        "--num_inference_steps", "2", "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0",
        "--report_to", "none", "--mixed_precision", "no", *extra,
    ]  # fmt: skip


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_text_run_saves_reloads_and_samples(vae_dir, configs, tmp_path):
    out = tmp_path / "text"
    train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, out, "text", "--conditioning_dropout", "0.5")))
    for name in ("model_index.json", "README.md", "loss_curve.png", "metrics.jsonl", "training_summary.json"):
        assert (out / name).is_file(), name
    assert sorted(os.listdir(out / "samples")) == ["step_000004.png"]
    assert [step for step, _ in list_checkpoints(out)] == [2, 4]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in metrics)
    assert 0 < np.mean([m["null_condition_fraction"] for m in metrics]) < 1
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["unet"][1] == "UNet2DConditionModel"

    pipe = LatentDiffusionPipeline.from_pretrained(out)  # encoder and tokenizer from the folder, not the package
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.model_max_length == 8 and pipe.text_encoder.config.hidden_size == 384
    assert pipe.unet.config.cross_attention_dim == 384 and pipe.unet.config.sample_size == 4
    assert pipe.vae.config.scaling_factor == 0.8  # the trained VAE, frozen: its scale unchanged
    torch.testing.assert_close(pipe.vae.state_dict(), AutoencoderKL.from_pretrained(vae_dir).state_dict())
    images = pipe(prompt=["a handwritten digit seven", ""], guidance_scale=3.0, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    assert images.shape == (2, 16, 16, 1) and 0 <= images.min() and images.max() <= 1
    card = (out / "README.md").read_text()
    assert "LatentDiffusionPipeline" in card and "a handwritten digit zero" in card
    sample = run_model_card_snippet(out, tmp_path, num_inference_steps=2)
    assert sample.size == (16, 16)


def test_class_run_with_cached_latents(vae_dir, configs, tmp_path):
    out = tmp_path / "class"
    flags = ["--cache_latents", "--class_filter", "1", "7", "--checkpointing_steps", "100"]
    train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, out, "class", *flags)))
    pipe = LatentDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.conditioning_type == "class" and pipe.num_classes == 10 and pipe.labels["seven"] == 7
    assert pipe.text_encoder is None and pipe.tokenizer is None
    images = pipe(class_labels=["seven", 1], num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 1, 16, 16)


def test_unconditional_run(vae_dir, configs, tmp_path):
    out = tmp_path / "none"
    train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, out, "none", "--max_train_steps", "2",
                                                  "--checkpointing_steps", "100")))  # fmt: skip
    pipe = LatentDiffusionPipeline.from_pretrained(out)
    assert pipe.conditioning_type == "none" and "null_condition_fraction" not in read_metrics(out)[0]
    assert pipe(batch_size=3, num_inference_steps=2, output_type="np").images.shape == (3, 16, 16, 1)


def test_bf16_run_saves_fp32_frozen_models(vae_dir, configs, tmp_path):
    """The core casts the frozen VAE to the compute dtype; the saved pipeline keeps the input fp32 weights."""
    out = tmp_path / "bf16"
    args = tiny_args(vae_dir, configs, out, "text", "--max_train_steps", "2", "--checkpointing_steps", "100")
    args[args.index("--mixed_precision") + 1] = "bf16"
    train_ldm.main(train_ldm.parse_args(args))
    assert json.loads((out / "training_summary.json").read_text())["mixed_precision"] == "bf16"
    pipe = LatentDiffusionPipeline.from_pretrained(out)
    assert pipe.vae.dtype == pipe.text_encoder.dtype == pipe.unet.dtype == torch.float32
    torch.testing.assert_close(pipe.vae.state_dict(), AutoencoderKL.from_pretrained(vae_dir).state_dict())


def test_captions_from_a_text_column(vae_dir, configs, tmp_path):
    """An imagefolder with metadata.jsonl (diffusers' text_to_image layout): its `text` column are the captions."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(8):
        name = f"{i:02d}.png"
        Image.fromarray(np.full((16, 16), 30 * i, dtype=np.uint8)).save(data / name)
        rows.append(json.dumps({"file_name": name, "text": "a dark square" if i < 4 else "a light square"}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "folder"
    args = tiny_args(vae_dir, configs, out, "text", "--max_train_steps", "2", "--checkpointing_steps", "100",
                     "--train_batch_size", "4")  # fmt: skip
    args[args.index("--dataset_name") : args.index("--dataset_name") + 2] = ["--train_data_dir", str(data)]
    train_ldm.main(train_ldm.parse_args(args))
    assert "a dark square" in (out / "README.md").read_text()


def test_resume_from_latest_continues_exactly(vae_dir, configs, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, straight, "class", "--validation_steps", "100")))
    reset_accelerate()
    train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, resumed, "class", "--max_train_steps", "2",
                                                  "--validation_steps", "100")))  # fmt: skip
    reset_accelerate()
    train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, resumed, "class", "--resume_from_checkpoint",
                                                  "latest", "--validation_steps", "100")))  # fmt: skip
    assert [m["step"] for m in read_metrics(resumed) if "loss" in m] == [1, 2, 3, 4]
    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def parse(*flags):
    return train_ldm.parse_args(["--dataset_name", "digits", "--output_dir", "x", "--max_train_steps", "1", *flags])


def test_defaults_and_the_variants_recipe():
    args = parse("--vae_name_or_path", "runs/vae")
    assert (args.conditioning, args.model_config) == ("text", "ldm-text-digits-32")
    assert args.training_recipe == str(HUB_CONFIGS_DIR / "ldm-text-digits-32" / "training_recipe.json")
    assert (args.learning_rate, args.prediction_type, args.snr_gamma, args.max_train_steps) == (1e-3, "v_prediction",
                                                                                                5.0, 1)  # fmt: skip
    assert parse("--vae_path", "runs/vae", "--conditioning", "class").model_config == "ldm-digits-32"
    assert parse("--vae_path", "v", "--learning_rate", "3e-4").learning_rate == 3e-4  # the command line wins


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--vae_name_or_path is required"),
        (["--vae_name_or_path", "v", "--conditioning", "clip"], "--conditioning must be one of"),
        (["--vae_name_or_path", "v", "--conditioning_dropout", "1"], r"--conditioning_dropout must be in \[0, 1\)"),
        (["--vae_name_or_path", "v", "--max_token_length", "1"], "--max_token_length must be >= 2"),
        (["--vae_name_or_path", "v", "--cache_latents", "--random_flip"], "--cache_latents encodes each image once"),
        (["--vae_name_or_path", "v", "--conditioning", "class", "--validation_prompts", "a"],
         "--validation_prompts needs --conditioning text"),
        (["--vae_name_or_path", "v", "--validation_guidance_scale", "-1"], "--validation_guidance_scale must be"),
    ],
)  # fmt: skip
def test_bad_flags_raise_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        parse(*flags)


def test_bad_inputs_raise_clear_errors(vae_dir, configs, tmp_path):
    with pytest.raises(ValueError, match="--vae_name_or_path .* does not exist"):
        train_ldm.main(train_ldm.parse_args(tiny_args(tmp_path / "missing", configs, tmp_path / "a")))
    reset_accelerate()
    with pytest.raises(ValueError, match="--resolution must be divisible by 8"):
        train_ldm.main(train_ldm.parse_args(tiny_args(vae_dir, configs, tmp_path / "b", "text", "--resolution", "12")))
    reset_accelerate()
    with pytest.raises(ValueError, match="needs a UNet2DConditionModel config"):
        args = tiny_args(vae_dir, configs, tmp_path / "c", "text")
        args[args.index("--model_config") + 1] = str(configs / "ldm-digits-32")
        train_ldm.main(train_ldm.parse_args(args))


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_with_resume(vae_dir, configs, tmp_path):
    from tests.training.processes import launch_two_processes

    out = tmp_path / "ddp"
    args = tiny_args(vae_dir, configs, out, "text", "--max_train_steps", "2", "--validation_steps", "100",
                     "--cache_latents")  # fmt: skip
    summary = launch_two_processes("train_ldm.py", args)
    ranks = summary["param_checksums"]["unet"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # DDP kept both ranks' weights identical
    resume = [*args, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]  # the last flag wins
    summary = launch_two_processes("train_ldm.py", resume)
    assert summary["global_step"] == 4
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2, 3, 4]
    assert LatentDiffusionPipeline.from_pretrained(out).conditioning_type == "text"


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(vae_dir, configs, tmp_path):
    """Text conditioning with cached latents: the UNet, its EMA, the optimizer and the data order come back."""
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(vae_dir, configs, out, "text", "--cache_latents", "--max_train_steps", "6",
                         "--validation_steps", "6")  # fmt: skip

    files = ["unet/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_ldm.py", args_for, tmp_path, files) == 3
