import json
import math
import os
import runpy
import sys

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel

from custom_pipelines.evaluation.cli import main
from custom_pipelines.evaluation.evaluator import evaluate_pipeline, sample_images
from custom_pipelines.evaluation.features import load_digits_images, reference_features

METRIC_KEYS = {"fid", "kid_mean", "kid_std", "precision", "recall", "inception_score_mean", "inception_score_std"}


@pytest.fixture(scope="module")
def tiny_ddpm_dir(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=16,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )
    path = tmp_path_factory.mktemp("tiny_ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(path)
    return path


class ReplayDigitsPipeline(DiffusionPipeline):
    """Test double: "generates" real held-out digits (of the requested class), picked by each sample's generator."""

    def __init__(self):
        super().__init__()

    @torch.no_grad()
    def __call__(self, batch_size=1, generator=None, class_labels=None, output_type="pt", return_dict=True):
        images, labels = load_digits_images("test", 16)
        picks = []
        for i, sample_generator in enumerate(generator):
            pool = torch.arange(len(labels)) if class_labels is None else (labels == class_labels[i]).nonzero()[:, 0]
            picks.append(pool[torch.randint(len(pool), (1,), generator=sample_generator)])
        return ImagePipelineOutput(images=images[torch.cat(picks)])


@pytest.mark.filterwarnings("ignore:FID from")
def test_cli_end_to_end_on_tiny_ddpm(tiny_ddpm_dir, tmp_path, digits_cache, capsys):
    output = tmp_path / "out" / "metrics.json"
    argv = ["--pipeline", str(tiny_ddpm_dir), "--num_samples", "16", "--num_inference_steps", "2"]
    argv += ["--batch_size", "8", "--seed", "0", "--reference", "digits", "--feature_extractor", "digits"]
    with pytest.warns(UserWarning, match="16 samples in 128 dimensions"):
        assert main([*argv, "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    assert METRIC_KEYS <= set(metrics) and "class_accuracy" not in metrics
    assert all(math.isfinite(metrics[key]) for key in METRIC_KEYS)
    assert metrics["num_samples"] == 16 and metrics["num_reference"] == 1797 and metrics["resolution"] == 16
    assert metrics["feature_extractor"] == "digits" and metrics["feature_dim"] == 128
    assert metrics["fid"] > 10 and metrics["precision"] < 0.5  # an untrained UNet makes noise, not digits
    assert 1.0 <= metrics["inception_score_mean"] <= 10.0
    assert "fid" in capsys.readouterr().out
    # Same seed, different batch size: per-sample generators make the run identical.
    assert main([*argv[:-6], "--batch_size", "5", "--seed", "0", "--output", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["fid"] == pytest.approx(metrics["fid"], rel=1e-6)


def test_cli_rejects_unsupported_options(tiny_ddpm_dir, digits_cache):
    argv = ["--pipeline", str(tiny_ddpm_dir), "--num_samples", "4", "--num_inference_steps", "1"]
    with pytest.raises(ValueError, match=r"does not take \['class_labels'\]"):
        main([*argv, "--class_labels", "all"])
    with pytest.raises(ValueError, match="--class_labels must be"):
        main([*argv, "--class_labels", "odd"])
    with pytest.raises(ValueError, match="needs inception_weights"):
        main([*argv, "--feature_extractor", "inception"])


def test_module_entry_point(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m custom_pipelines.evaluate", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("custom_pipelines.evaluate", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--num_inference_steps" in out and "--inception_weights" in out and "--class_labels" in out


def test_real_digits_score_well_against_real_digits(digits_cache):
    pipe = ReplayDigitsPipeline()
    metrics = evaluate_pipeline(
        pipe,
        200,
        reference="digits",
        extractor="digits",
        reference_split="train",
        batch_size=64,
        class_labels=range(10),
        kid_subsets=20,
    )
    # Held-out real digits vs the train split: near-zero KID, high precision/recall, accurate classes.
    assert metrics["fid"] < 1.0 and abs(metrics["kid_mean"]) < 0.05
    assert metrics["precision"] > 0.8 and metrics["recall"] > 0.5
    assert metrics["class_accuracy"] >= 0.9
    assert metrics["inception_score_mean"] > 9  # ten balanced, confidently classified classes


@pytest.mark.filterwarnings("ignore:FID from")
def test_precomputed_reference_features_are_reused(digits_cache):
    from custom_pipelines.evaluation.evaluator import build_feature_extractor

    extractor = build_feature_extractor("digits", resolution=16)
    reference = reference_features("digits", extractor, resolution=16, num_samples=300)
    a = evaluate_pipeline(ReplayDigitsPipeline(), 40, reference=reference, extractor=extractor, kid_subsets=5)
    b = evaluate_pipeline(ReplayDigitsPipeline(), 40, "digits", extractor, reference_num_samples=300, kid_subsets=5)
    assert a["reference"] == "features" and a["num_reference"] == 300
    assert {k: a[k] for k in METRIC_KEYS} == {k: b[k] for k in METRIC_KEYS}


def test_sample_images_cycles_labels_and_checks_arguments():
    batches = list(sample_images(ReplayDigitsPipeline(), 7, batch_size=3, class_labels=[1, 2]))
    assert [images.shape[0] for images, _ in batches] == [3, 3, 1]
    assert torch.cat([labels for _, labels in batches]).tolist() == [1, 2, 1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="num_samples and batch_size"):
        next(sample_images(ReplayDigitsPipeline(), 0))
    with pytest.raises(ValueError, match=r"does not take \['guidance_scale'\]"):
        next(sample_images(ReplayDigitsPipeline(), 2, guidance_scale=2.0))


@pytest.mark.filterwarnings("ignore:FID from")
def test_cli_scheduler_and_timesteps(tiny_ddpm_dir, tmp_path, digits_cache):
    from custom_pipelines import UnconditionalDiffusionPipeline

    ours = tmp_path / "ours"
    stock = DDPMPipeline.from_pretrained(tiny_ddpm_dir)
    UnconditionalDiffusionPipeline(unet=stock.unet, scheduler=stock.scheduler).save_pretrained(ours)
    argv = ["--num_samples", "16", "--batch_size", "8", "--scheduler", "dpmsolver", "--timesteps", "9", "4", "1"]
    metrics = main_metrics([*argv, "--pipeline", str(ours)], tmp_path)
    assert metrics["scheduler"] == "DPMSolver2MScheduler" and metrics["timesteps"] == "9 4 1"
    assert math.isfinite(metrics["fid"])
    with pytest.raises(ValueError, match=r"does not take \['timesteps'\]"):  # diffusers' DDPMPipeline
        main([*argv, "--pipeline", str(tiny_ddpm_dir)])


@pytest.mark.filterwarnings("ignore:FID from")
def test_cli_bf16_matches_fp32(tiny_ddpm_dir, tmp_path, digits_cache):
    """--torch_dtype bf16 (scheduler state fp32) gives the fp32 run's metrics to bf16 accuracy, and records it."""
    from custom_pipelines import UnconditionalDiffusionPipeline

    ours = tmp_path / "ours"
    stock = DDPMPipeline.from_pretrained(tiny_ddpm_dir)
    UnconditionalDiffusionPipeline(unet=stock.unet, scheduler=stock.scheduler).save_pretrained(ours)
    argv = ["--pipeline", str(ours), "--num_samples", "16", "--batch_size", "8", "--num_inference_steps", "3"]
    fp32 = main_metrics([*argv, "--torch_dtype", "fp32"], tmp_path)
    bf16 = main_metrics([*argv, "--torch_dtype", "bf16"], tmp_path)
    assert (fp32["torch_dtype"], bf16["torch_dtype"], bf16["compile"]) == ("fp32", "bf16", False)
    assert bf16["fid"] == pytest.approx(fp32["fid"], rel=0.05) and bf16["fid"] != fp32["fid"]


def main_metrics(argv, tmp_path):
    output = tmp_path / "metrics.json"
    assert main([*argv, "--output", str(output)]) == 0
    return json.loads(output.read_text())


@pytest.mark.filterwarnings("ignore:FID from")
def test_cli_on_a_gan_pipeline_without_scheduler(tmp_path, digits_cache):
    """GAN pipelines have no scheduler: the CLI records None instead of failing with an AttributeError."""
    from custom_pipelines import DCGANGenerator, GANPipeline
    from custom_pipelines.hub.configs import load_component_config

    torch.manual_seed(0)
    generator = DCGANGenerator.from_config(load_component_config("dcgan-digits-16", "gan_generator")).eval()
    GANPipeline(gan_generator=generator).save_pretrained(tmp_path / "gan")
    metrics = main_metrics(["--pipeline", str(tmp_path / "gan"), "--num_samples", "16", "--batch_size", "8"], tmp_path)
    assert metrics["scheduler"] is None and math.isfinite(metrics["fid"]) and metrics["resolution"] == 16
    with pytest.raises(ValueError, match=r"--timesteps_file .* does not exist"):
        main(["--pipeline", str(tmp_path / "gan"), "--timesteps_file", str(tmp_path / "missing.json")])


def test_cli_reports_a_missing_pipeline_in_one_line(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "custom_pipelines.evaluate", "--pipeline", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: pretrained_model_name_or_path=")


# ----- every pipeline type: class labels by default, prompts, input images (the shared tiny folders) -----------------
@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    from tests.test_sample_cli import tiny_pipeline_folders

    return tiny_pipeline_folders(tmp_path_factory.mktemp("tiny-pipelines"))


FAST = ["--kid_subsets", "2", "--device", "cpu", "--torch_dtype", "fp32"]
STEP = ["--num_inference_steps", "1"]


@pytest.fixture(scope="module")
def input_folders(tmp_path_factory):
    """Five grayscale digits-like inputs at 8×8 (for ×2 super-resolution) and at 16×16 (for the others)."""
    from PIL import Image

    folders = {}
    images, _ = load_digits_images("test", 16)
    for size in (8, 16):
        folders[size] = tmp_path_factory.mktemp(f"inputs{size}")
        for i, image in enumerate(torch.nn.functional.interpolate(images[:5], size=size, mode="area")):
            pixels = (image[0].numpy() * 255).round().astype("uint8")
            Image.fromarray(pixels, mode="L").save(folders[size] / f"{i}.png")
    return folders


@pytest.mark.filterwarnings("ignore:FID from")
def test_cli_class_conditional_defaults_to_balanced_labels_over_all_classes(saved_pipeline, tmp_path, digits_cache):
    argv = ["--pipeline", saved_pipeline("ldm-class"), "--num_samples", "6", *FAST, *STEP]  # 3 classes
    metrics = main_metrics(argv, tmp_path)
    assert metrics["class_labels"] == "0,1,2" and metrics["num_samples"] == 6 and metrics["resolution"] == 16
    assert 0 <= metrics["class_accuracy"] <= 1 and math.isfinite(metrics["fid"])
    assert main_metrics([*argv, "--class_labels", "2"], tmp_path)["class_labels"] == "2"
    with pytest.raises(ValueError, match="--class_labels none: LatentDiffusionPipeline is class-conditional"):
        main([*argv, "--class_labels", "none"])


@pytest.mark.filterwarnings("ignore:FID from")
def test_cli_text_pipeline_takes_prompts(saved_pipeline, tmp_path, digits_cache):
    argv = ["--pipeline", saved_pipeline("ldm-text"), "--num_samples", "5", *FAST, *STEP]
    metrics = main_metrics([*argv, "--prompt", "a handwritten 3", "a handwritten 7"], tmp_path)
    assert metrics["prompt"] == ["a handwritten 3", "a handwritten 7"] and metrics["num_samples"] == 5
    assert math.isfinite(metrics["fid"]) and "class_accuracy" not in metrics
    with pytest.raises(ValueError, match="--prompt is required: LatentDiffusionPipeline is text-conditional"):
        main(argv)
    with pytest.raises(ValueError, match="--prompt does not apply to LatentDiffusionPipeline"):
        main(["--pipeline", saved_pipeline("ldm-class"), "--prompt", "a digit", *FAST])


@pytest.mark.filterwarnings("ignore:FID from")
@pytest.mark.parametrize(
    ("kind", "size", "argv", "pipeline_class"),
    [
        ("sr", 8, [], "SuperResolutionPipeline"),  # 8×8 → 16×16, scored against 16×16 digits
        ("cyclegan", 16, ["--direction", "b_to_a"], "CycleGANPipeline"),
        ("ldm-none", 16, ["--strength", "0.5", "--num_inference_steps", "2"], "LatentImg2ImgPipeline"),  # SDEdit
    ],
)
def test_cli_scores_the_outputs_of_image_input_pipelines(
    saved_pipeline, input_folders, tmp_path, digits_cache, kind, size, argv, pipeline_class
):
    base = ["--pipeline", saved_pipeline(kind), "--image", str(input_folders[size]), *FAST, *argv]
    metrics = main_metrics(base, tmp_path)  # one sample per input by default
    assert metrics["pipeline_class"] == pipeline_class and metrics["image"] == str(input_folders[size])
    assert metrics["num_samples"] == 5 and metrics["resolution"] == 16 and math.isfinite(metrics["fid"])
    if kind == "sr":  # deterministic: more samples than inputs would repeat outputs
        with pytest.raises(ValueError, match="--num_samples 6 is more than the 5 input image"):
            main([*base, "--num_samples", "6"])
        with pytest.raises(ValueError, match="--image is required: SuperResolutionPipeline"):
            main(["--pipeline", saved_pipeline(kind), *FAST])


def test_cli_refuses_abbreviated_and_inapplicable_flags(tiny_ddpm_dir):
    from custom_pipelines.evaluation.cli import parse_args

    for abbreviated in ("--num_sampl", "--prom", "--class_label"):
        with pytest.raises(SystemExit):
            parse_args(["--pipeline", "x", abbreviated, "3"])
    with pytest.raises(ValueError, match="--strength must be in"):
        parse_args(["--pipeline", "x", "--strength", "2"])
    with pytest.raises(ValueError, match="--image does not apply to DDPMPipeline"):
        main(["--pipeline", str(tiny_ddpm_dir), "--image", str(tiny_ddpm_dir / "model_index.json"), "--device", "cpu"])
