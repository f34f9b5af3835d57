"""The two ways to make a UNet class-conditional, behind one convention: real classes are ids 0..K−1 and id K is
the learned "null" class that stands for "no class" (the unconditional branch of classifier-free guidance).

- `"embedding"`: diffusers' `UNet2DModel(class_embed_type=None, num_class_embeds=K + 1)`; the class embedding is
  added to the timestep embedding in every ResNet block (Dhariwal & Nichol 2021, §4; Ho & Salimans 2022).
- `"concat"`: our `ClassConcatUNet2DModel`; a learned class map is concatenated with x_t as extra input channels.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from ..options import CONDITIONING_METHODS, ConditioningMethod
from .unet_class_concat import _UNET_KEYS, ClassConcatUNet2DModel


def conditioning_method(unet: torch.nn.Module) -> ConditioningMethod:
    """Which of the two class-conditioning methods `unet` uses; raises for an unconditional model."""
    if isinstance(unet, ClassConcatUNet2DModel):
        return "concat"
    config = getattr(unet, "config", None)
    if config is not None and config.get("num_class_embeds") and config.get("class_embed_type") is None:
        return "embedding"
    raise ValueError(
        f"{type(unet).__name__} is not class-conditional: use a UNet2DModel with class_embed_type=None and "
        "num_class_embeds=num_classes + 1, or a ClassConcatUNet2DModel"
    )


def num_classes_of(unet: torch.nn.Module) -> int:
    """K, the number of real classes of a class-conditional UNet (its null class has id K)."""
    method = conditioning_method(unet)
    if method == "concat":
        return unet.config.num_classes
    elif method == "embedding":
        return unet.config.num_class_embeds - 1
    else:
        raise ValueError(f"conditioning method must be one of {CONDITIONING_METHODS}, got {method!r}")


def null_class_id(unet: torch.nn.Module) -> int:
    """The id of the learned null class: K (the last embedding row)."""
    return num_classes_of(unet)


def class_conditional_unet_config(
    unet_config: dict, method: ConditioningMethod, num_classes: int, class_embed_dim: int | None = None
) -> tuple[type, dict]:
    """`(class, config)` of a class-conditional UNet with the size of `unet_config` (any of the two classes' configs).

    Use it to switch a config between the two methods, or to make an unconditional `UNet2DModel` config conditional.
    `class_embed_dim` (concat only) defaults to the config's, else 4.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    unet_kwargs = {key: unet_config[key] for key in _UNET_KEYS if key in unet_config}
    if method == "embedding":
        return UNet2DModel, {**unet_kwargs, "class_embed_type": None, "num_class_embeds": num_classes + 1}
    elif method == "concat":
        embed_dim = class_embed_dim if class_embed_dim is not None else unet_config.get("class_embed_dim", 4)
        return ClassConcatUNet2DModel, {**unet_kwargs, "num_classes": num_classes, "class_embed_dim": embed_dim}
    else:
        raise ValueError(f"conditioning method must be one of {CONDITIONING_METHODS}, got {method!r}")
