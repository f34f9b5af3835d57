import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from custom_pipelines.models.unet_class_concat import ClassConcatUNet2DModel
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.training import list_checkpoints, read_metrics
from tests.utils import run_model_card_snippet
from training import train_cfg

REPO = Path(__file__).resolve().parents[2]


def tiny_args(output_dir, *extra):
    return [
        "--dataset_name", "digits", "--output_dir", str(output_dir), "--model_config", "cfg-tiny-8",
        "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "64", "--max_train_steps", "4",
        "--checkpointing_steps", "4", "--validation_steps", "4", "--num_validation_images", "4",
        "--num_inference_steps", "2", "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0",
        "--report_to", "none", *extra,
    ]  # fmt: skip


def test_train_save_reload_and_sample_by_name(tmp_path):
    out = tmp_path / "run"
    train_cfg.main(train_cfg.parse_args(tiny_args(out, "--conditioning_dropout", "0.5")))
    for name in ("model_index.json", "README.md", "loss_curve.png", "metrics.jsonl", "training_summary.json"):
        assert (out / name).is_file(), name
    assert sorted(os.listdir(out / "samples")) == ["step_000004.png"]
    assert [step for step, _ in list_checkpoints(out)] == [4]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in metrics)
    assert 0 < np.mean([m["null_label_fraction"] for m in metrics]) < 1  # half the labels were dropped
    assert "ClassConditionalDiffusionPipeline" in (out / "README.md").read_text()
    sample = run_model_card_snippet(out, tmp_path, num_inference_steps=2)  # the card's snippet runs as written
    assert sample.size[0] == sample.size[1] > 0

    pipe = ClassConditionalDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.labels["three"] == 3 and pipe.unet.config.num_class_embeds == 11
    images = pipe(class_labels=[3, 3, "seven"], guidance_scale=3.0, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    assert images.shape == (3, 8, 8, 1) and 0 <= images.min() and images.max() <= 1


def test_concat_conditioning_and_no_dropout(tmp_path):
    out = tmp_path / "concat"
    args = tiny_args(out, "--conditioning", "concat", "--class_embed_dim", "3", "--conditioning_dropout", "0",
                     "--max_train_steps", "2", "--checkpointing_steps", "100")  # fmt: skip
    train_cfg.main(train_cfg.parse_args(args))
    assert all(m["null_label_fraction"] == 0 for m in read_metrics(out))
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["custom_pipelines.models.unet_class_concat", "ClassConcatUNet2DModel"]
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe.unet, ClassConcatUNet2DModel) and pipe.unet.config.class_embed_dim == 3
    images = pipe(class_labels=["zero", 9], num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 1, 8, 8)


def test_learning_rate_defaults(tmp_path):
    assert train_cfg.parse_args(tiny_args(tmp_path)).learning_rate == 2e-4
    finetune = train_cfg.parse_args(tiny_args(tmp_path, "--pretrained_model_name_or_path", str(tmp_path)))
    assert finetune.learning_rate == pytest.approx(2e-5)
    explicit = ["--pretrained_model_name_or_path", str(tmp_path), "--learning_rate", "1e-3"]
    assert train_cfg.parse_args(tiny_args(tmp_path, *explicit)).learning_rate == 1e-3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--conditioning", "film"], "--conditioning must be one of"),
        (["--conditioning_dropout", "1.0"], r"--conditioning_dropout must be in \[0, 1\)"),
        (["--conditioning_dropout", "-0.1"], r"--conditioning_dropout must be in \[0, 1\)"),
        (["--class_embed_dim", "0"], "--class_embed_dim"),
        (["--prediction_type", "noise"], "--prediction_type"),
        (["--validation_guidance_scale", "-1"], "--validation_guidance_scale"),
        (["--learning_rate", "0"], "learning_rate"),
        (["--label_column", "digit"], "--label_column='digit' is not a column"),
    ],
)
def test_bad_flags_raise_clear_errors(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_cfg.main(train_cfg.parse_args(tiny_args(tmp_path / "x", *extra)))


@pytest.mark.slow  # a fresh interpreter importing torch + diffusers: ~5-20 s on 2 busy cores
def test_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "train_cfg.py"), *tiny_args(tmp_path / "c", "--conditioning", "x")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode != 0 and "--conditioning must be one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_fid_every_on_the_class_conditional_family(tmp_path, monkeypatch):
    """The shared one-UNet trainer gives train_cfg FID during training too (guided samples, classes cycled)."""
    monkeypatch.setenv("CUSTOM_PIPELINES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    args = tiny_args(out, "--max_train_steps", "4", "--eval_fid_every", "4", "--eval_num_samples", "20")
    train_cfg.main(train_cfg.parse_args(args))
    (evaluation,) = [m for m in read_metrics(out) if "eval/fid" in m]
    assert evaluation["step"] == 4 and evaluation["eval/fid"] > 0 and 0 <= evaluation["eval/recall"] <= 1


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(tmp_path):
    from tests.training.kill_resume import check_kill_points

    def args_for(out):
        return tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--validation_steps", "6")

    files = ["unet/diffusion_pytorch_model.safetensors"]
    assert check_kill_points("train_cfg.py", args_for, tmp_path, files) == 3
