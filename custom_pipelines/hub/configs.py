"""The named model variants under `hub_configs/`: each folder is laid out exactly like a Hub repo (model_index.json
plus one sub-folder per component with its config). They are the single source of model sizes."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path


def _hub_configs_dir() -> Path:
    """Where the variants are: the data package `custom_pipelines.hub_configs` of an installed wheel (or an editable
    install), else the clone's top-level `hub_configs/` (a checkout on `sys.path` without any install)."""
    spec = importlib.util.find_spec("custom_pipelines.hub_configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(__file__).resolve().parents[2] / "hub_configs"


HUB_CONFIGS_DIR = _hub_configs_dir()


def list_variants() -> list[str]:
    if not HUB_CONFIGS_DIR.is_dir():
        return []
    return sorted(p.name for p in HUB_CONFIGS_DIR.iterdir() if (p / "model_index.json").is_file())


CHANNEL_KEYS = ("in_channels", "img_channels")  # diffusers' models / our GAN generators


def variants_with_channels(channels: int, prefix: str = "") -> list[str]:
    """The `hub_configs/` variants named `prefix…` whose image-side component takes `channels` channels (for a
    variant with a VAE, the VAE's: its UNet sees latents)."""
    found = []
    names = sorted(p.name for p in HUB_CONFIGS_DIR.iterdir() if p.is_dir()) if HUB_CONFIGS_DIR.is_dir() else []
    for name in names:  # every variant folder, bare-model ones (a VAE) too
        if not name.startswith(prefix):
            continue
        configs = sorted((HUB_CONFIGS_DIR / name).glob("*/config.json"), key=lambda p: p.parent.name != "vae")
        for path in configs:
            config = json.loads(path.read_text(encoding="utf-8"))
            value = next((config[k] for k in CHANNEL_KEYS if k in config), None)
            if value is not None:
                if value == channels:
                    found.append(name)
                break
    return found


def resolve_variant(name_or_path: str | os.PathLike, component: str | None = None, **hub_kwargs) -> Path:
    """A local folder, one of our `hub_configs/` variant names, or a Hub repo id → a local folder with its configs.

    For a repo id only the JSON configs are fetched (`allow_patterns`), never weights.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if (HUB_CONFIGS_DIR / str(name_or_path)).is_dir():
        return HUB_CONFIGS_DIR / str(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        components = [f"{component}/*.json"] if component else ["*/*.json"]
        patterns = ["model_index.json", "training_recipe.json", *components]
        return Path(snapshot_download(str(name_or_path), allow_patterns=patterns, **hub_kwargs))
    except Exception as err:
        raise ValueError(
            f"model config {str(name_or_path)!r} is not a folder, a variant in hub_configs/ "
            f"({', '.join(list_variants())}) or a reachable Hub repo ({type(err).__name__}: {err})"
        ) from err


def load_component_config(
    name_or_path: str | os.PathLike, component: str, filename: str = "config.json", **hub_kwargs
) -> dict:
    """The JSON config of one component (e.g. `unet`, or `scheduler` with filename `scheduler_config.json`).

    `hub_kwargs` (`cache_dir`, `revision`, `token`, ...) go to `snapshot_download` for a Hub repo id.
    """
    folder = resolve_variant(name_or_path, component, **hub_kwargs)
    path = folder / component / filename
    if not path.is_file():
        raise ValueError(f"{folder} has no {component}/{filename}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
