"""Which layers a LoRA adapts, per model type, and the validated `peft.LoraConfig` for them.

Hu et al. 2021: a frozen weight W gets a trained low-rank update, W' = W + (α / r)·B·A with A ∈ R^{r×k},
B ∈ R^{d×r} (B = 0 at the start, so training begins at the base model). For convolutions peft makes A an r-channel
convolution with W's kernel and B a 1×1 convolution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The attention projections (to_q/to_k/to_v/to_out.0: what every Stable-Diffusion LoRA adapts) plus the ResNet
# blocks' two 3×3 convolutions and their timestep projection: a pixel UNet has few attention layers (one or two
# resolutions), so most of what it can change about a digit's shape is in the convolutions.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
RESNET_TARGETS = ("conv1", "conv2", "time_emb_proj")
# UNet2DConditionModel's transformer blocks also have the 1×1/linear projections in and out of the block and the
# feed-forward network (diffusers' SD LoRA scripts adapt the attention only; these are cheap and help small models)
TRANSFORMER_TARGETS = ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")

DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "UNet2DModel": ATTENTION_TARGETS + RESNET_TARGETS,
    "ClassConcatUNet2DModel": ATTENTION_TARGETS + RESNET_TARGETS,
    "UNet2DConditionModel": ATTENTION_TARGETS + RESNET_TARGETS + TRANSFORMER_TARGETS,
}


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The default `target_modules` of `model`'s class (see `DEFAULT_TARGET_MODULES`), or a ValueError naming the
    supported classes."""
    name = type(model).__name__
    if name not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"LoRA has no default target modules for a {name}; supported: {sorted(DEFAULT_TARGET_MODULES)} "
            "(pass target_modules explicitly for another model)"
        )
    return list(DEFAULT_TARGET_MODULES[name])


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the Linear / Conv2d layers of `model` (not the LoRA layers themselves)."""
    import torch

    adaptable = (torch.nn.Linear, torch.nn.Conv2d)  # the layer types peft's LoRA wraps here
    # a layer already wrapped by peft (another adapter) is `<name>.base_layer`: it keeps its own name
    return [
        name.removesuffix(".base_layer")
        for name, module in model.named_modules()
        if isinstance(module, adaptable) and ".lora_" not in f".{name}"
    ]


def _matches(name: str, target: str) -> bool:
    """peft's rule for a string in `target_modules`: the module's full name is `target` or ends in `.target`."""
    return name == target or name.endswith(f".{target}")


def check_target_modules(model: torch.nn.Module, target_modules: list[str] | tuple[str, ...]) -> list[str]:
    """Every target must name at least one Linear/Conv2d layer of `model` (peft only fails when none of them
    does); returns the matched full names. ValueError naming the unknown target and the available short names."""
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(f"target_modules must be a non-empty list of module names, got {target_modules!r}")
    names = adaptable_module_names(model)
    matched = []
    for target in target_modules:
        if not isinstance(target, str) or not target:
            raise ValueError(f"target_modules entries must be non-empty strings, got {target!r}")
        hits = [n for n in names if _matches(n, target)]
        if not hits:
            short = sorted({".".join(n.split(".")[-2:]) if n.split(".")[-1].isdigit() else n.split(".")[-1]
                            for n in names})  # fmt: skip
            raise ValueError(
                f"unknown LoRA target module {target!r}: no Linear/Conv2d layer of the {type(model).__name__} is "
                f"named so; its layers end in: {short}"
            )
        matched += hits
    return sorted(set(matched))


def make_lora_config(
    model: torch.nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] | None = None,
):
    """A validated `peft.LoraConfig`: rank r ≥ 1, α > 0 (default r, i.e. scale α/r = 1, as diffusers' scripts),
    dropout in [0, 1), targets (default: `default_target_modules(model)`) that exist in `model`."""
    from .adapters import require_peft

    LoraConfig = require_peft().LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora rank must be an integer >= 1, got {rank!r}")
    alpha = float(rank) if alpha is None else alpha
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"lora alpha must be > 0, got {alpha!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout!r}")
    targets = list(target_modules) if target_modules is not None else default_target_modules(model)
    check_target_modules(model, targets)
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets, init_lora_weights=True
    )
