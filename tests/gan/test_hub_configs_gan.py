"""The GAN variants in hub_configs/: Hub repo layout, configs that match the classes exactly, models that build."""

import importlib
import inspect
import json

import pytest
import torch

from custom_pipelines.hub.configs import HUB_CONFIGS_DIR

VARIANTS = {
    "stylegan-digits-32": ("StyleGANPipeline", "stylegan", "StyleGANGenerator", "StyleGANDiscriminator"),
    "progan-digits-32": ("GANPipeline", "gan_generator", "ProGANGenerator", "ProGANDiscriminator"),
    "dcgan-digits-32": ("GANPipeline", "gan_generator", "DCGANGenerator", "DCGANCritic"),
    "stylegan-ffhq-256": ("StyleGANPipeline", "stylegan", "StyleGANGenerator", "StyleGANDiscriminator"),
}
PRIVATE_KEYS = {"_class_name", "_diffusers_version"}


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def gan_class(name):
    return getattr(importlib.import_module("custom_pipelines.gan"), name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_and_every_json_parses(variant):
    folder = HUB_CONFIGS_DIR / variant
    pipeline_name, component, generator_name, _ = VARIANTS[variant]
    index = load_json(folder / "model_index.json")
    assert index["_class_name"] == pipeline_name and "_diffusers_version" in index
    library, class_name = index[component]
    assert class_name == generator_name and library.startswith("custom_pipelines.gan.")
    assert getattr(importlib.import_module(library), class_name) is gan_class(generator_name)
    # the pipeline's one component, plus the training-time discriminator the pipeline does not load
    assert {p.name for p in folder.iterdir() if p.is_dir()} == {component, "discriminator"}
    for path in folder.rglob("*.json"):
        assert isinstance(load_json(path), dict), path


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("role", ["generator", "discriminator"])
def test_config_keys_match_init_and_model_builds(variant, role):
    _, component, generator_name, discriminator_name = VARIANTS[variant]
    folder, class_name = (component, generator_name) if role == "generator" else ("discriminator", discriminator_name)
    config = load_json(HUB_CONFIGS_DIR / variant / folder / "config.json")
    cls = gan_class(class_name)
    assert config["_class_name"] == class_name
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(config) - PRIVATE_KEYS == params
    with torch.device("meta"):  # the paper-size variant is only built, never allocated
        model = cls.from_config(config)
    assert model.config.resolution == config["resolution"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if "digits" in v])
def test_digits_variants_generate_and_discriminate_32x32_grayscale(variant):
    _, component, generator_name, discriminator_name = VARIANTS[variant]
    torch.manual_seed(0)
    model = gan_class(generator_name).from_config(load_json(HUB_CONFIGS_DIR / variant / component / "config.json"))
    disc = gan_class(discriminator_name).from_config(
        load_json(HUB_CONFIGS_DIR / variant / "discriminator/config.json")
    )
    images = model(torch.randn(4, model.config.z_dim))
    assert images.shape == (4, 1, 32, 32)
    assert disc(images).shape == (4, 1)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # small enough to train on a CPU


def test_ffhq_variant_has_the_paper_sizes():
    config = load_json(HUB_CONFIGS_DIR / "stylegan-ffhq-256" / "stylegan" / "config.json")
    assert (config["resolution"], config["img_channels"], config["z_dim"], config["w_dim"]) == (256, 3, 512, 512)
    assert (config["n_mapping_layers"], config["channel_max"]) == (8, 512)
    with torch.device("meta"):
        model = gan_class("StyleGANGenerator").from_config(config)
    assert model.num_ws == 14
    assert 25e6 < sum(p.numel() for p in model.parameters()) < 27e6  # 26.1M, as StyleGAN1 at 256²
