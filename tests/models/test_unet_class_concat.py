import importlib
import inspect
import json

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.models.class_conditioning import (
    class_conditional_unet_config,
    conditioning_method,
    null_class_id,
    num_classes_of,
)
from custom_pipelines.models.unet_class_concat import ClassConcatUNet2DModel


def build(method, seed=0, num_classes=10):
    cls, config = class_conditional_unet_config(load_component_config("cfg-tiny-8", "unet"), method, num_classes)
    torch.manual_seed(seed)
    return cls.from_config(config).eval()


def inputs(batch=3):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 1, 8, 8, generator=g),
        torch.tensor([5, 50, 95][:batch]),
        torch.tensor([0, 3, 10][:batch]),
    )


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_same_interface_and_convention(method):
    unet = build(method)
    sample, t, labels = inputs()
    with torch.no_grad():
        out = unet(sample, t, class_labels=labels).sample
        tuple_out = unet(sample, t, labels, return_dict=False)[0]
        scalar_t = unet(sample, torch.tensor(5), class_labels=labels).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, tuple_out, rtol=0, atol=0)
    assert scalar_t.shape == sample.shape
    assert conditioning_method(unet) == method and num_classes_of(unet) == 10 and null_class_id(unet) == 10


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_class_changes_the_prediction(method):
    unet = build(method)
    sample, t, _ = inputs(2)
    with torch.no_grad():
        a = unet(sample, t, class_labels=torch.tensor([1, 1])).sample
        b = unet(sample, t, class_labels=torch.tensor([2, 2])).sample
    assert (a - b).abs().max() > 1e-4


def test_concat_model_structure():
    unet = build("concat")
    assert unet.unet.config.in_channels == 1 + unet.config.class_embed_dim
    assert unet.class_embedding.weight.shape == (11, unet.config.class_embed_dim)
    class_map = unet.class_map(torch.tensor([3, 10]), 8, 8)
    assert class_map.shape == (2, unet.config.class_embed_dim, 8, 8)
    torch.testing.assert_close(class_map[0, :, 5, 2], unet.class_embedding.weight[3])


@pytest.mark.parametrize("method", ["embedding", "concat"])
def test_save_load_bit_identical(method, tmp_path):
    unet = build(method)
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    saved = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = type(unet).from_pretrained(tmp_path).eval()
    state, loaded_state = unet.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() == saved.keys()
    for key in state:
        assert torch.equal(state[key], loaded_state[key]), key
    sample, t, labels = inputs()
    with torch.no_grad():
        assert torch.equal(unet(sample, t, class_labels=labels).sample, loaded(sample, t, class_labels=labels).sample)
    assert {k: v for k, v in loaded.config.items() if k != "_name_or_path"} == dict(unet.config)


def test_concat_config_keys_match_init_and_class_is_importable(tmp_path):
    build("concat").save_config(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = set(inspect.signature(ClassConcatUNet2DModel.__init__).parameters) - {"self"}
    assert set(config) - {"_class_name", "_diffusers_version"} == params
    module = importlib.import_module("custom_pipelines.models.unet_class_concat")
    assert getattr(module, config["_class_name"]) is ClassConcatUNet2DModel


def test_config_conversion_round_trip():
    base = load_component_config("cfg-tiny-8", "unet")
    cls, concat = class_conditional_unet_config(base, "concat", 10, class_embed_dim=6)
    assert cls is ClassConcatUNet2DModel and concat["class_embed_dim"] == 6 and concat["num_classes"] == 10
    cls, embedding = class_conditional_unet_config(concat, "embedding", 7)
    assert cls is UNet2DModel and embedding["num_class_embeds"] == 8 and embedding["class_embed_type"] is None
    assert embedding["block_out_channels"] == base["block_out_channels"]
    ddpm = load_component_config("ddpm-tiny-8", "unet")  # unconditional → conditional
    assert class_conditional_unet_config(ddpm, "embedding", 10)[1]["num_class_embeds"] == 11


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: class_conditional_unet_config({}, "film", 10), "conditioning method"),
        (lambda: class_conditional_unet_config({}, "concat", 0), "num_classes"),
        (lambda: ClassConcatUNet2DModel(num_classes=0), "num_classes"),
        (lambda: ClassConcatUNet2DModel(class_embed_dim=0), "class_embed_dim"),
        (
            lambda: conditioning_method(
                UNet2DModel(
                    block_out_channels=(8,),
                    norm_num_groups=4,
                    down_block_types=("DownBlock2D",),
                    up_block_types=("UpBlock2D",),
                )
            ),
            "not class-conditional",
        ),
    ],
)
def test_bad_options_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_concat_forward_rejects_bad_labels():
    unet = build("concat")
    sample, t, _ = inputs(2)
    with pytest.raises(ValueError, match="class_labels are required"):
        unet(sample, t)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\]"):
        unet(sample, t, class_labels=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="expected 1 or 2 class_labels"):
        unet(sample, t, class_labels=torch.tensor([0, 1, 2]))
