"""LoRA adapter files in diffusers' layout: `pytorch_lora_weights.safetensors` whose keys are the component name,
then peft's names (`unet.down_blocks.1.attentions.0.to_q.lora_A.weight`), and whose `__metadata__` holds diffusers'
`lora_adapter_metadata` (the `LoraConfig` per component, `unet.r`, `unet.lora_alpha`, ...) so that
`StableDiffusionPipeline.load_lora_weights` rebuilds the same config. Ours adds `custom_pipelines_lora`: the base
model's name, class and a fingerprint of its parameter names and shapes, checked before an adapter is applied.

Safetensors only: a folder or repo with nothing but a pickle (`.bin`) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' name (what load_lora_weights looks for first)
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key (its loaders.lora_base, >= 0.35)
BASE_METADATA_KEY = "custom_pipelines_lora"


def base_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the base model's parameter names and shapes (LoRA layers left out, peft's `base_layer` names
    folded back): two models take the same adapters exactly when their fingerprints agree."""
    rows = []
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        rows.append(f"{name.replace('.base_layer.', '.')}:{tuple(tensor.shape)}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16]


def base_info(model: torch.nn.Module, base_model: str | None) -> dict:
    return {"base_model": base_model, "base_class": type(model).__name__, "base_fingerprint": base_fingerprint(model)}


def config_metadata(config) -> dict:
    """A `LoraConfig` as JSON-able values (sets → sorted lists), as diffusers' `_collate_lora_metadata` writes it."""
    out = {}
    for key, value in config.to_dict().items():
        if isinstance(value, set):
            value = sorted(value)
        out[key] = value
    return out


def save_adapter_file(
    path: str,
    components: dict[str, tuple[dict[str, torch.Tensor], object, dict]],
) -> None:
    """Write `{component: (peft state dict, LoraConfig, base_info)}` to `path` (safetensors, atomically)."""
    from safetensors.torch import save_file

    from custom_pipelines.io import atomic_path

    tensors, lora_metadata, bases = {}, {}, {}
    for component, (state_dict, config, base) in components.items():
        for key, value in state_dict.items():
            tensors[f"{component}.{key}"] = value.detach().to("cpu").contiguous()
        lora_metadata.update({f"{component}.{k}": v for k, v in config_metadata(config).items()})
        bases[component] = base
    metadata = {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(lora_metadata, indent=2, sort_keys=True),
        BASE_METADATA_KEY: json.dumps(bases, sort_keys=True),
    }
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata=metadata)


def resolve_adapter_file(path_or_repo_id: str | os.PathLike, weight_name: str | None = None, **hub_kwargs) -> str:
    """A local `.safetensors` file, a folder holding one, or a Hub repo id → the local file path."""
    path = os.fspath(path_or_repo_id)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"LoRA adapter files are safetensors only, got {path!r}")
        return path
    if os.path.isdir(path):
        name = weight_name or _single_safetensors(path, os.listdir(path))
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise ValueError(f"{path} holds no {name}")
        return resolve_adapter_file(file)
    from huggingface_hub import HfApi, hf_hub_download

    if weight_name is None:
        kwargs = {k: v for k, v in hub_kwargs.items() if k in ("token", "revision")}
        weight_name = _single_safetensors(path, HfApi().list_repo_files(path, **kwargs))
    if not weight_name.endswith(".safetensors"):
        raise ValueError(f"LoRA adapter files are safetensors only, got weight_name {weight_name!r}")
    return hf_hub_download(path, weight_name, **hub_kwargs)


def _single_safetensors(where: str, names: list[str]) -> str:
    if LORA_WEIGHT_NAME in names:
        return LORA_WEIGHT_NAME
    found = [n for n in names if n.endswith(".safetensors") and "/" not in n]
    if len(found) == 1:
        return found[0]
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if not found and pickles:
        raise ValueError(f"{where} holds only pickled weights ({pickles}); LoRA adapters load from safetensors only")
    raise ValueError(
        f"{where} holds {'no' if not found else 'several'} .safetensors LoRA files ({found}): pass weight_name"
    )


def read_adapter_file(path: str) -> tuple[dict[str, torch.Tensor], dict | None, dict]:
    """(tensors, diffusers' lora metadata or None, our per-component base info or {})."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    lora = json.loads(metadata[LORA_ADAPTER_METADATA_KEY]) if LORA_ADAPTER_METADATA_KEY in metadata else None
    bases = json.loads(metadata[BASE_METADATA_KEY]) if BASE_METADATA_KEY in metadata else {}
    return tensors, lora, bases


def component_state_dict(tensors: dict, component: str) -> dict[str, torch.Tensor]:
    """The keys of `component` without its prefix, in peft's layout (older diffusers / kohya-style names converted
    by diffusers' `convert_unet_state_dict_to_peft`)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    prefix = f"{component}."
    state_dict = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if state_dict and not any("lora_A" in k for k in state_dict):
        state_dict = convert_unet_state_dict_to_peft(state_dict)
    return state_dict


def component_config(state_dict: dict, lora_metadata: dict | None, component: str):
    """The `LoraConfig` from the file's metadata, or (a file without it) inferred as diffusers does: ranks from
    `lora_B`'s shapes, α = r."""
    from diffusers.utils.peft_utils import get_peft_kwargs

    from .adapters import require_peft

    LoraConfig = require_peft().LoraConfig

    prefix = f"{component}."
    if lora_metadata:
        kwargs = {k[len(prefix) :]: v for k, v in lora_metadata.items() if k.startswith(prefix)}
        if kwargs:
            return LoraConfig(**kwargs)
    ranks = {f"^{k}": v.shape[1] for k, v in state_dict.items() if "lora_B" in k and v.ndim > 1}
    return LoraConfig(**get_peft_kwargs(ranks, None, state_dict, is_unet=True))


def check_compatible(model: torch.nn.Module, state_dict: dict, base: dict | None, model_name: str | None) -> None:
    """Refuse an adapter made for another base: a different architecture fingerprint, or (a file without one) a
    layer missing or of other shapes. The error names both bases."""
    mine = f"{type(model).__name__} of {model_name or 'this pipeline'}"
    theirs = (
        f"{base.get('base_class')} of {base.get('base_model') or 'an unnamed base'}" if base else "an unknown base"
    )
    if base and base.get("base_fingerprint") and base["base_fingerprint"] != base_fingerprint(model):
        raise ValueError(
            f"this LoRA was trained for {theirs} (parameter fingerprint {base['base_fingerprint']}), not for {mine} "
            f"(fingerprint {base_fingerprint(model)}): their layers differ in names or shapes"
        )
    modules = dict(model.named_modules())
    for key, tensor in state_dict.items():
        module_name, _, kind = key.partition(".lora_")
        layer = modules.get(module_name)
        layer = getattr(layer, "base_layer", layer)
        if layer is None:
            raise ValueError(f"this LoRA (for {theirs}) adapts {module_name!r}, which {mine} does not have")
        if not kind.endswith("weight") or tensor.ndim < 2:
            continue
        expected = _expected_dims(layer, kind.startswith("A"))
        got = tensor.shape[1] if kind.startswith("A") else tensor.shape[0]
        if expected is not None and got != expected:
            side = "input" if kind.startswith("A") else "output"
            raise ValueError(
                f"this LoRA (for {theirs}) has {side} size {got} at {module_name!r}, where {mine} has {expected}: "
                f"it was trained for another base model ({key} has shape {tuple(tensor.shape)})"
            )


def _expected_dims(layer: torch.nn.Module, is_a: bool) -> int | None:
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features if is_a else layer.out_features
    if isinstance(layer, torch.nn.Conv2d):
        return layer.in_channels if is_a else layer.out_channels
    return None
