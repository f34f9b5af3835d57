"""Every hub_configs/ folder is a valid Hub repo layout whose components build from their configs."""

import importlib
import inspect
import json

import pytest
import torch

from custom_pipelines.hub.configs import HUB_CONFIGS_DIR, list_variants, load_component_config

VARIANTS = list_variants()
IGNORED_KEYS = {"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path"}


def components(variant):
    index = json.loads((HUB_CONFIGS_DIR / variant / "model_index.json").read_text())
    return {k: v for k, v in index.items() if not k.startswith("_")}


def test_expected_variants_exist():
    assert {"ddpm-digits-16", "ddpm-cifar10-32", "ddpm-tiny-8"} <= set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_json_parses(variant):
    for path in (HUB_CONFIGS_DIR / variant).rglob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path


@pytest.mark.parametrize("variant", VARIANTS)
def test_components_build_and_keys_match_init(variant):
    index = json.loads((HUB_CONFIGS_DIR / variant / "model_index.json").read_text())
    pipeline_module = importlib.import_module("custom_pipelines")
    assert hasattr(pipeline_module, index["_class_name"]) or index["_class_name"] in dir(pipeline_module)
    for name, (library, class_name) in components(variant).items():
        cls = getattr(importlib.import_module(library), class_name)
        filename = "scheduler_config.json" if "scheduler" in name else "config.json"
        config = load_component_config(variant, name, filename)
        assert config["_class_name"] == class_name
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        keys = set(config) - IGNORED_KEYS
        assert keys == params, f"{variant}/{name}: extra {keys - params}, missing {params - keys}"
        with torch.device("meta"):  # build without allocating (the paper-size variants are large)
            cls.from_config(config)
