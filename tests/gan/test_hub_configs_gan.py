"""The GAN variants in hub_configs/: Hub repo layout, configs that match the classes exactly, models that build,
and a training recipe of train_gan flags."""

import importlib
import inspect
import json

import pytest
import torch

from custom_pipelines.gan.losses import GAN_OBJECTIVES
from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, list_variants
from custom_pipelines.training.recipe import read_recipe
from training import train_gan

VARIANTS = {
    "stylegan-digits-32": ("StyleGANPipeline", "stylegan", "StyleGANGenerator", "StyleGANDiscriminator"),
    "progan-digits-32": ("GANPipeline", "gan_generator", "ProGANGenerator", "ProGANDiscriminator"),
    "dcgan-digits-32": ("GANPipeline", "gan_generator", "DCGANGenerator", "DCGANCritic"),
    "dcgan-digits-16": ("GANPipeline", "gan_generator", "DCGANGenerator", "DCGANCritic"),
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
    assert {p.name for p in folder.iterdir() if p.is_file()} == {"model_index.json", "training_recipe.json"}
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
def test_digits_variants_generate_and_discriminate_grayscale(variant):
    _, component, generator_name, discriminator_name = VARIANTS[variant]
    torch.manual_seed(0)
    model = gan_class(generator_name).from_config(load_json(HUB_CONFIGS_DIR / variant / component / "config.json"))
    disc = gan_class(discriminator_name).from_config(
        load_json(HUB_CONFIGS_DIR / variant / "discriminator/config.json")
    )
    images = model(torch.randn(4, model.config.z_dim))
    size = int(variant.rsplit("-", 1)[1])  # digits-16, digits-32
    assert images.shape == (4, 1, size, size) and model.config.resolution == size
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


def test_every_gan_variant_is_listed_here():
    assert {v for v in list_variants() if train_gan.family_of(HUB_CONFIGS_DIR / v) is not None} == set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_recipe_holds_valid_train_gan_flags(variant):
    path = HUB_CONFIGS_DIR / variant / train_gan.RECIPE_FILE
    recipe = read_recipe(path, train_gan.build_parser())  # raises on a key that is no flag, or a bad value
    assert recipe == load_json(path)  # every value already has its flag's type
    assert {"loss", "learning_rate", "adam_beta1", "adam_beta2", "n_critic"} <= set(recipe)
    assert recipe["loss"] in GAN_OBJECTIVES
    weight = {"ns_r1": "r1_gamma", "wgan_gp": "gp_lambda", "wgan": "clip_value"}[recipe["loss"]]
    assert weight in recipe and recipe[weight] > 0
    assert not ({"r1_gamma", "gp_lambda", "clip_value"} - {weight}) & set(recipe)  # no other objective's weight
