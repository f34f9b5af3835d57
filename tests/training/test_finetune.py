"""Fine-tuning starts from the given weights: the first training step's model output and loss are the loaded
model's on the same batch and noise (not a fresh initialisation's). Digits 0–4 first, then fine-tuned on 5–9."""

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from diffusers import UNet2DModel

from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from custom_pipelines.training import read_metrics
from training import train_cfg, train_ddpm


def reset_accelerate():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def tiny_args(output_dir, model_config, classes, *extra):
    return [
        "--dataset_name", "digits", "--output_dir", str(output_dir), "--model_config", model_config,
        "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "48", "--max_train_steps", "3",
        "--checkpointing_steps", "100", "--validation_steps", "100", "--num_validation_images", "2",
        "--num_inference_steps", "1", "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0",
        "--report_to", "none", "--mixed_precision", "no", "--class_filter", *map(str, classes), *extra,
    ]  # fmt: skip


def train_digit_bases(root):
    """A DDPM (`root/ddpm`) and a CFG model (`root/cfg`) trained (briefly) on digits 0–4; returns `root`."""
    reset_accelerate()
    train_ddpm.main(train_ddpm.parse_args(tiny_args(root / "ddpm", "ddpm-tiny-8", range(5))))
    reset_accelerate()
    train_cfg.main(train_cfg.parse_args(tiny_args(root / "cfg", "cfg-tiny-8", range(5))))
    reset_accelerate()
    return root


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return train_digit_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture
def first_step(monkeypatch):
    """Records the first training forward pass (inputs and output) and the first training loss call."""
    record = {}
    forward, training_losses = UNet2DModel.forward, DDPMAncestralScheduler.training_losses

    def recording_forward(self, sample, timestep, class_labels=None, return_dict=True):
        output = forward(self, sample, timestep, class_labels=class_labels, return_dict=return_dict)
        if torch.is_grad_enabled() and "output" not in record:
            labels = None if class_labels is None else class_labels.clone()
            record.update(sample=sample.detach().clone(), timestep=timestep.clone(), class_labels=labels)
            record["output"] = output.sample.detach().clone()
        return output

    def recording_losses(self, model_output, sample, noise, timesteps, **kwargs):
        losses = training_losses(self, model_output, sample, noise, timesteps, **kwargs)
        if "loss" not in record:
            record.update(clean=sample.clone(), noise=noise.clone(), timesteps=timesteps.clone())
            record["loss"] = losses["loss"].item()
        return losses

    monkeypatch.setattr(UNet2DModel, "forward", recording_forward)
    monkeypatch.setattr(DDPMAncestralScheduler, "training_losses", recording_losses)
    return record


def loss_of(unet, scheduler, record) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        output = unet(record["sample"], record["timestep"], class_labels=record["class_labels"]).sample
    loss = scheduler.training_losses(output, record["clean"], record["noise"], record["timesteps"])["loss"]
    return output, loss.item()


def check_starts_from(base_unet, record, out_dir):
    scheduler = DDPMAncestralScheduler.from_pretrained(out_dir, subfolder="scheduler")
    output, loss = loss_of(base_unet, scheduler, record)
    torch.testing.assert_close(record["output"], output, rtol=1e-5, atol=1e-5)
    assert loss == pytest.approx(record["loss"], rel=1e-5)
    assert read_metrics(out_dir)[0]["loss"] == pytest.approx(record["loss"], rel=1e-5)
    torch.manual_seed(123)
    fresh = UNet2DModel.from_config(base_unet.config)
    if base_unet.class_embedding is not None and record["class_labels"] is not None:
        torch.nn.init.normal_(fresh.class_embedding.weight)
    _, fresh_loss = loss_of(fresh, scheduler, record)
    assert abs(fresh_loss - record["loss"]) > 1e-3 * record["loss"]


def test_ddpm_finetune_on_new_digits_starts_from_given_weights(bases, first_step, tmp_path):
    out = tmp_path / "ddpm-5-9"
    args = tiny_args(out, "ddpm-tiny-8", range(5, 10), "--pretrained_model_name_or_path", str(bases / "ddpm"))
    train_ddpm.main(train_ddpm.parse_args([*args, "--max_train_steps", "1"]))
    check_starts_from(UNet2DModel.from_pretrained(bases / "ddpm", subfolder="unet"), first_step, out)


def test_cfg_finetune_on_new_digits_starts_from_given_weights(bases, first_step, tmp_path):
    out = tmp_path / "cfg-5-9"
    args = tiny_args(out, "cfg-tiny-8", range(5, 10), "--pretrained_model_name_or_path", str(bases / "cfg"))
    parsed = train_cfg.parse_args([*args, "--max_train_steps", "1"])
    assert parsed.learning_rate == pytest.approx(2e-5)  # the fine-tuning default: 10× lower
    train_cfg.main(parsed)
    labels = first_step["class_labels"]
    assert ((labels >= 5) & (labels <= 10)).all()  # digits 5–9, or the null class
    assert read_metrics(out)[0]["lr"] == pytest.approx(2e-5)
    check_starts_from(UNet2DModel.from_pretrained(bases / "cfg", subfolder="unet"), first_step, out)
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(out)
    assert pipe.labels["seven"] == 7


def test_unconditional_ddpm_becomes_class_conditional_from_its_weights(bases, first_step, tmp_path):
    """A DDPM's UNet gets a zero class embedding: at the first step it is exactly the unconditional model."""
    out = tmp_path / "ddpm-to-cfg"
    args = tiny_args(out, "cfg-tiny-8", range(5, 10), "--pretrained_model_name_or_path", str(bases / "ddpm"))
    train_cfg.main(train_cfg.parse_args([*args, "--max_train_steps", "1"]))
    base = UNet2DModel.from_pretrained(bases / "ddpm", subfolder="unet")
    with torch.no_grad():
        unconditional = base(first_step["sample"], first_step["timestep"]).sample
    torch.testing.assert_close(first_step["output"], unconditional, rtol=1e-5, atol=1e-5)
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(out)
    assert pipe.num_classes == 10 and pipe.unet.config.num_class_embeds == 11
