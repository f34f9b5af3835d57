"""`--gradient_checkpointing`: the same gradients as without (activations recomputed in the backward pass, not
kept), for every model class that supports it; a model that does not is named."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel

from custom_pipelines import ClassConcatUNet2DModel, StyleGANGenerator
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.class_conditioning import class_conditional_unet_config
from custom_pipelines.training.trainer import enable_gradient_checkpointing


def gradients(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def same_gradients(build, loss_fn):
    torch.manual_seed(0)
    plain = build()
    checkpointed = build()
    checkpointed.load_state_dict(plain.state_dict())
    enable_gradient_checkpointing({"model": checkpointed.train()})
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())  # really on
    plain.train()
    expected, got = gradients(plain, loss_fn), gradients(checkpointed, loss_fn)
    assert expected.keys() == got.keys() and len(expected) > 10
    worst = max(float((expected[k] - got[k]).abs().max()) for k in expected)
    assert worst <= 1e-6, f"largest gradient difference {worst}"
    return worst


def test_unet_gradients_are_unchanged():
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 50, 500, 999])
    same_gradients(
        lambda: UNet2DModel.from_config(load_component_config("ddpm-tiny-8", "unet")),
        lambda m: m(x, t).sample.pow(2).mean(),
    )


def test_class_concat_unet_gradients_are_unchanged():
    cls, config = class_conditional_unet_config(load_component_config("cfg-tiny-8", "unet"), "concat", 10)
    assert cls is ClassConcatUNet2DModel
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([1, 50, 500, 999]), torch.tensor([0, 3, 7, 10])
    same_gradients(lambda: cls.from_config(config), lambda m: m(x, t, class_labels=labels).sample.pow(2).mean())


def test_autoencoder_gradients_are_unchanged():
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    same_gradients(
        lambda: AutoencoderKL.from_config(load_component_config("vae-digits-32-f4", "vae")),
        lambda m: (m(x).sample - x).abs().mean(),
    )


def test_a_model_that_cannot_checkpoint_is_named():
    config = {**load_component_config("stylegan-digits-32", "stylegan"), "resolution": 8, "z_dim": 8, "w_dim": 8}
    with pytest.raises(ValueError, match=r"--gradient_checkpointing: the 'generator' model \(StyleGANGenerator\)"):
        enable_gradient_checkpointing({"generator": StyleGANGenerator.from_config(config)})


def test_a_checkpointed_ddpm_run_trains_the_same_weights(tmp_path, fresh_accelerate_state):
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file

    from training import train_ddpm

    def run(folder, *extra):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        argv = ["--dataset_name", "digits", "--model_config", "ddpm-tiny-8", "--resolution", "8",
                "--max_train_samples", "32", "--train_batch_size", "8", "--max_train_steps", "4",
                "--validation_steps", "4", "--num_validation_images", "2", "--num_inference_steps", "1",
                "--lr_warmup_steps", "0", "--mixed_precision", "no", "--report_to", "none",
                "--output_dir", str(folder), *extra]  # fmt: skip
        train_ddpm.main(train_ddpm.parse_args(argv))
        return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))

    plain, checkpointed = run(tmp_path / "plain"), run(tmp_path / "ckpt", "--gradient_checkpointing")
    worst = max(float((plain[k] - checkpointed[k]).abs().max()) for k in plain)
    assert worst <= 1e-6
    summary = json.loads((tmp_path / "ckpt" / "training_summary.json").read_text())
    assert summary["gradient_checkpointing"] is True
