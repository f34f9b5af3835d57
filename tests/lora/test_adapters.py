"""LoRA on our pipelines (UNet2DModel, ClassConcatUNet2DModel, UNet2DConditionModel): files in diffusers' layout,
save → load → the same images, fused == unfused, several adapters weighted, scale 0 == the base exactly, adapters
for another base refused naming both, bad ranks / targets refused, safetensors only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from custom_pipelines.lora import LORA_WEIGHT_NAME, adapters, make_lora_config
from custom_pipelines.lora.files import read_adapter_file
from tests.lora.conftest import add_random_adapter, sample, tiny_pipeline, unet_output


def test_save_load_gives_the_same_images_in_diffusers_layout(kind, tmp_path):
    trained = tiny_pipeline(kind)
    base_images = sample(trained, kind)
    add_random_adapter(trained.unet, "style")
    lora_images = sample(trained, kind)
    assert np.abs(lora_images - base_images).max() > 1e-3  # the adapter changes the images
    path = trained.save_lora_weights(tmp_path, base_model="user/base")
    assert path == str(tmp_path / LORA_WEIGHT_NAME)

    with safe_open(path, framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert not any(".style." in k for k in keys)  # diffusers' layout: no adapter name in the keys
    lora_config = json.loads(metadata["lora_adapter_metadata"])
    assert lora_config["unet.r"] == 4 and lora_config["unet.lora_alpha"] == 4
    assert json.loads(metadata["custom_pipelines_lora"])["unet"]["base_model"] == "user/base"

    fresh = tiny_pipeline(kind)
    fresh.load_lora_weights(tmp_path, adapter_name="style")
    assert fresh.get_list_adapters() == {"unet": ["style"]} and fresh.get_active_adapters() == ["style"]
    np.testing.assert_array_equal(sample(fresh, kind), lora_images)
    fresh.unload_lora_weights()  # the base model again, exactly
    np.testing.assert_array_equal(sample(fresh, kind), base_images)
    assert not adapters.lora_layers(fresh.unet)


def test_fused_equals_unfused_and_unfuse_gives_the_base_back(kind):
    pipe = tiny_pipeline(kind)
    base = unet_output(pipe.unet, kind)
    add_random_adapter(pipe.unet, "a")
    pipe.set_adapters(["a"], [0.7])
    unfused = unet_output(pipe.unet, kind)
    pipe.set_adapters(["a"], [1.0])
    pipe.fuse_lora(lora_scale=0.7)  # scale 0.7 merged into the weights == adapter weight 0.7 unfused
    assert adapters.is_fused(pipe.unet)
    torch.testing.assert_close(unet_output(pipe.unet, kind), unfused, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="already fused"):
        pipe.fuse_lora()
    pipe.unfuse_lora()
    torch.testing.assert_close(unet_output(pipe.unet, kind), unet_output_with(pipe, kind, 1.0), atol=0, rtol=0)
    pipe.disable_lora()
    torch.testing.assert_close(unet_output(pipe.unet, kind), base, atol=1e-5, rtol=1e-4)  # float rounding only


def unet_output_with(pipe, kind, weight):
    pipe.set_adapters(["a"], [weight])
    return unet_output(pipe.unet, kind)


def test_scale_zero_and_disabled_are_the_base_exactly(kind):
    pipe = tiny_pipeline(kind)
    base = unet_output(pipe.unet, kind)
    add_random_adapter(pipe.unet, "a")
    assert not torch.equal(unet_output(pipe.unet, kind), base)
    pipe.set_adapters("a", 0.0)
    assert torch.equal(unet_output(pipe.unet, kind), base)
    pipe.set_adapters("a", 1.0)
    pipe.disable_lora()
    assert torch.equal(unet_output(pipe.unet, kind), base)
    pipe.enable_lora()
    assert not torch.equal(unet_output(pipe.unet, kind), base)


def test_two_adapters_mixed_add_their_weighted_updates():
    """W' x = W x + Σ_i w_i (α_i / r_i) B_i A_i x, checked on one attention projection."""
    pipe = tiny_pipeline("ddpm")
    add_random_adapter(pipe.unet, "digits", rank=4, seed=1)
    add_random_adapter(pipe.unet, "thick", rank=8, seed=2, alpha=4.0)
    pipe.set_adapters(["digits", "thick"], adapter_weights=[0.5, 1.5])
    assert pipe.get_active_adapters() == ["digits", "thick"]
    name, layer = next((n, m) for n, m in adapters.lora_layers(pipe.unet) if n.endswith("to_q"))
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = layer.base_layer(x)
        for adapter, weight, scale in (("digits", 0.5, 4 / 4), ("thick", 1.5, 4 / 8)):
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            expected = expected + weight * scale * (x @ a.T @ b.T)
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    # mixing differs from either alone, and the whole model agrees with fusing the same mix
    mixed = unet_output(pipe.unet, "ddpm")
    pipe.set_adapters("digits")
    assert not torch.allclose(unet_output(pipe.unet, "ddpm"), mixed)
    pipe.set_adapters(["digits", "thick"], [0.5, 1.5])
    pipe.fuse_lora()
    torch.testing.assert_close(unet_output(pipe.unet, "ddpm"), mixed, atol=1e-5, rtol=1e-4)
    pipe.unfuse_lora()
    with pytest.raises(ValueError, match=r"adapter_names \['nope'\] are not loaded"):
        pipe.set_adapters(["nope"])
    with pytest.raises(ValueError, match="one per adapter"):
        pipe.set_adapters(["digits", "thick"], [1.0])


def test_an_adapter_for_another_base_is_refused_naming_both(tmp_path):
    ddpm, cfg = tiny_pipeline("ddpm"), tiny_pipeline("cfg")
    add_random_adapter(cfg.unet, "a")
    cfg.save_lora_weights(tmp_path / "cfg-lora", base_model="user/cfg-base")
    with pytest.raises(ValueError, match=r"ClassConcatUNet2DModel of user/cfg-base.*not for UNet2DModel"):
        ddpm.load_lora_weights(tmp_path / "cfg-lora")
    assert not adapters.lora_layers(ddpm.unet)  # nothing half-loaded

    # a file without our metadata (another tool's): the layer shapes decide
    tensors, _, _ = read_adapter_file(str(tmp_path / "cfg-lora" / LORA_WEIGHT_NAME))
    first_conv = next(k for k in tensors if k.endswith("down_blocks.0.resnets.0.conv1.lora_A.weight"))
    wrong = {first_conv.replace("unet.unet.", "unet."): torch.zeros(4, 3, 3, 3)}
    wrong[first_conv.replace("unet.unet.", "unet.").replace("lora_A", "lora_B")] = torch.zeros(8, 4, 1, 1)
    with pytest.raises(ValueError, match=r"input size 3 at 'down_blocks.0.resnets.0.conv1'.*has 8"):
        ddpm.load_lora_weights(wrong)
    with pytest.raises(ValueError, match="holds no LoRA weights for \\['unet'\\]"):
        ddpm.load_lora_weights({"text_encoder.x.lora_A.weight": torch.zeros(1, 1)})


def test_bad_rank_alpha_dropout_and_targets_raise():
    unet = tiny_pipeline("ddpm").unet
    for rank in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="lora rank must be an integer >= 1"):
            make_lora_config(unet, rank)
    with pytest.raises(ValueError, match="lora alpha must be > 0"):
        make_lora_config(unet, 4, alpha=0)
    with pytest.raises(ValueError, match=r"lora dropout must be in \[0, 1\)"):
        make_lora_config(unet, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"unknown LoRA target module 'to_qkv'.*to_q"):
        make_lora_config(unet, 4, target_modules=["to_q", "to_qkv"])
    config = make_lora_config(unet, 4, target_modules=["down_blocks.1.attentions.0.to_q"])
    adapters.add_adapter(unet, config, "one")
    assert [n for n, _ in adapters.lora_layers(unet)] == ["down_blocks.1.attentions.0.to_q"]
    with pytest.raises(ValueError, match="'one' is already loaded"):
        adapters.add_adapter(unet, config, "one")


def test_adapter_files_are_safetensors_only(tmp_path):
    pipe = tiny_pipeline("ddpm")
    (tmp_path / "pickled").mkdir()
    torch.save({"unet.a.lora_A.weight": torch.zeros(1)}, tmp_path / "pickled" / "pytorch_lora_weights.bin")
    with pytest.raises(ValueError, match="only pickled weights.*safetensors only"):
        pipe.load_lora_weights(tmp_path / "pickled")
    with pytest.raises(ValueError, match="safetensors only"):
        pipe.load_lora_weights(tmp_path / "pickled" / "pytorch_lora_weights.bin")
    (tmp_path / "two").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"x": torch.zeros(1)}, tmp_path / "two" / name)
    with pytest.raises(ValueError, match="several .safetensors LoRA files.*pass weight_name"):
        pipe.load_lora_weights(tmp_path / "two")
