"""LoRA adapters on one model (any `torch.nn.Module`: UNet2DModel has no diffusers `PeftAdapterMixin`), all through
peft's layers: inject, read and write their weights, activate and weight several, merge into the base and back,
remove. diffusers' `PeftAdapterMixin` does the same on UNet2DConditionModel; here it works for every denoiser."""

from __future__ import annotations

import contextlib
import warnings

import torch

PEFT_MIN_VERSION = "0.17"  # as diffusers' own LoRA support (its `training` extra)


def require_peft():
    """The `peft` module, or an ImportError saying how to install it (LoRA is an optional feature)."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            f"LoRA needs peft>={PEFT_MIN_VERSION}: pip install 'custom-pipelines[lora]' (or pip install peft)"
        ) from err
    return peft


@contextlib.contextmanager
def _several_adapters_allowed():
    """peft warns whenever a second adapter joins a model; holding several is what `set_adapters` is for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        yield


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every peft LoRA layer in `model`."""
    BaseTunerLayer = require_peft().tuners.tuners_utils.BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_names(model: torch.nn.Module) -> list[str]:
    """The adapters loaded into `model`, in loading order."""
    return list(getattr(model, "peft_config", {}) or {})


def active_adapters(model: torch.nn.Module) -> list[str]:
    layers = lora_layers(model)
    return list(layers[0][1].active_adapters) if layers else []


def check_adapter_names(model: torch.nn.Module, names: list[str]) -> None:
    known = adapter_names(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"adapter_names {unknown} are not loaded; loaded adapters: {known}")


def next_adapter_name(model: torch.nn.Module) -> str:
    """`default_<n>`, the name diffusers gives an adapter loaded without `adapter_name`."""
    names, n = adapter_names(model), len(adapter_names(model))
    while f"default_{n}" in names:
        n += 1
    return f"default_{n}"


def add_adapter(model: torch.nn.Module, config, adapter_name: str = "default") -> torch.nn.Module:
    """Inject a fresh adapter (A: Kaiming-uniform from the global torch RNG, B = 0) into `model` in place."""
    inject_adapter_in_model = require_peft().inject_adapter_in_model

    if adapter_name in adapter_names(model):
        raise ValueError(f"adapter_name {adapter_name!r} is already loaded; loaded adapters: {adapter_names(model)}")
    with _several_adapters_allowed():
        return inject_adapter_in_model(config, model, adapter_name=adapter_name)


def adapter_state_dict(model: torch.nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The weights of one adapter in peft's names without the adapter name (`...to_q.lora_A.weight`): the layout of
    diffusers' LoRA files after their `unet.` prefix."""
    get_peft_model_state_dict = require_peft().get_peft_model_state_dict

    check_adapter_names(model, [adapter_name])
    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def load_adapter_weights(model: torch.nn.Module, state_dict: dict, config, adapter_name: str) -> None:
    """Inject an adapter shaped by `config` and `state_dict`'s keys, then set its weights; every tensor must land."""
    peft = require_peft()
    inject_adapter_in_model, set_peft_model_state_dict = peft.inject_adapter_in_model, peft.set_peft_model_state_dict

    if adapter_name in adapter_names(model):
        raise ValueError(f"adapter_name {adapter_name!r} is already loaded; loaded adapters: {adapter_names(model)}")
    with _several_adapters_allowed():
        inject_adapter_in_model(config, model, adapter_name=adapter_name, state_dict=state_dict)
    try:
        result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora_" in k]
        if unexpected:
            raise ValueError(f"LoRA weights with no layer to go to: {unexpected[:5]}")
    except Exception:
        delete_adapter(model, adapter_name)
        raise


def delete_adapter(model: torch.nn.Module, adapter_name: str) -> None:
    from diffusers.utils.peft_utils import delete_adapter_layers

    delete_adapter_layers(model, adapter_name)
    config = getattr(model, "peft_config", None)
    if config is not None:
        config.pop(adapter_name, None)
        if not config:
            del model.peft_config


def set_adapters(model: torch.nn.Module, names: list[str], weights: list[float]) -> None:
    """Activate `names` together, each scaled by its weight (scale = weight · α / r per layer): the outputs add up,
    W' = W + Σ_i w_i (α_i / r_i) B_i A_i."""
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    check_adapter_names(model, names)
    set_weights_and_activate_adapters(model, names, weights)


def set_enabled(model: torch.nn.Module, enabled: bool) -> None:
    from diffusers.utils.peft_utils import set_adapter_layers

    set_adapter_layers(model, enabled=enabled)


def fuse(model: torch.nn.Module, lora_scale: float = 1.0, safe_fusing: bool = False, names=None) -> None:
    """Merge the active (or `names`) adapters into the base weights, scaled by `lora_scale` on top of their
    adapter weights: W ← W + lora_scale · Σ (α/r) w B A. `unfuse` undoes it."""
    names = list(names) if names is not None else active_adapters(model)
    check_adapter_names(model, names)
    for _, layer in lora_layers(model):
        if lora_scale != 1.0:
            for name in names:
                if name in layer.scaling:
                    layer.scaling[name] *= lora_scale
        layer.merge(safe_merge=safe_fusing, adapter_names=names)
        layer._fused_lora = (names, lora_scale)  # what `unfuse` restores


def unfuse(model: torch.nn.Module) -> None:
    """Subtract the merged adapters from the base weights again and restore their scales."""
    for _, layer in lora_layers(model):
        layer.unmerge()
        names, lora_scale = getattr(layer, "_fused_lora", ((), 1.0))
        if lora_scale != 1.0:
            for name in names:
                if name in layer.scaling:
                    layer.scaling[name] /= lora_scale
        layer._fused_lora = ((), 1.0)


def is_fused(model: torch.nn.Module) -> bool:
    return any(layer.merged for _, layer in lora_layers(model))


def unload(model: torch.nn.Module) -> torch.nn.Module:
    """Remove every LoRA layer (the base layers are put back, unfused weights as they were)."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
