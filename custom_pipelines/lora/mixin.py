"""`LoraMixin`: diffusers' LoRA loading API on our pipelines, for every denoiser we have (UNet2DModel,
UNet2DConditionModel, ClassConcatUNet2DModel), with diffusers' names and meanings:

    pipe.load_lora_weights("runs/lora-digits", adapter_name="digits")   # a folder, a file or a Hub repo id
    pipe.set_adapters(["digits", "thick"], adapter_weights=[0.5, 1.0])  # several at once, each weighted
    pipe.fuse_lora(lora_scale=0.8); pipe.unfuse_lora()                  # merged into the weights and back
    pipe.unload_lora_weights()                                          # the base model again
"""

from __future__ import annotations

import numbers
import os

import torch

from . import adapters, files


class LoraMixin:
    """LoRA adapters on a pipeline's denoiser (`lora_components`, default `("unet",)`); files in diffusers' layout
    (`custom_pipelines.lora.files`), so adapters move between our pipelines and diffusers' SD pipelines."""

    lora_components: tuple[str, ...] = ("unet",)

    def _lora_models(self, components=None) -> dict[str, torch.nn.Module]:
        names = list(components) if components is not None else list(self.lora_components)
        unknown = [n for n in names if n not in self.lora_components]
        if unknown:
            raise ValueError(f"components {unknown} take no LoRA here; LoRA components: {list(self.lora_components)}")
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        weight_name: str | None = None,
        **hub_kwargs,
    ) -> None:
        """Load a LoRA adapter (diffusers' layout: `unet.`-prefixed peft keys) into the denoiser and make it the
        active adapter at weight 1.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): an adapter folder (with
                `pytorch_lora_weights.safetensors`), a `.safetensors` file, a Hub repo id, or the tensors themselves.
            adapter_name (`str`, *optional*): the name to refer to it by (default `default_<n>`, as diffusers).
            weight_name (`str`, *optional*): the file inside a folder or repo (default: the one `.safetensors`).
            hub_kwargs: `token`, `revision`, `cache_dir`, `local_files_only`, `force_download` for a repo id.

        Raises `ValueError` for an adapter of another base model (naming both), a name already in use, a folder
        with only pickled weights, or a file with no weights for the denoiser.
        """
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            tensors, lora_metadata, bases = pretrained_model_name_or_path_or_dict, None, {}
            source = "the given state dict"
        else:
            path = files.resolve_adapter_file(pretrained_model_name_or_path_or_dict, weight_name, **hub_kwargs)
            tensors, lora_metadata, bases = files.read_adapter_file(path)
            source = os.fspath(pretrained_model_name_or_path_or_dict)
        plan = {}
        for component, model in self._lora_models().items():
            state_dict = files.component_state_dict(tensors, component)
            if state_dict:
                files.check_compatible(model, state_dict, bases.get(component), self._lora_base_name())
                plan[component] = (model, state_dict, files.component_config(state_dict, lora_metadata, component))
        if not plan:
            prefixes = sorted({k.split(".")[0] for k in tensors})
            raise ValueError(
                f"{source} holds no LoRA weights for {list(self.lora_components)} (its keys start with {prefixes})"
            )
        for model, state_dict, config in plan.values():
            name = adapter_name or adapters.next_adapter_name(model)
            adapters.load_adapter_weights(model, state_dict, config, name)
            adapters.set_adapters(model, [name], [1.0])

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Activate `adapter_names` together, each scaled by its weight (default 1.0; 0 gives the base model's
        output exactly)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if not names:
            raise ValueError("adapter_names must name at least one loaded adapter")
        if adapter_weights is None:
            weights = [1.0] * len(names)
        elif isinstance(adapter_weights, numbers.Real):
            weights = [float(adapter_weights)] * len(names)
        else:
            weights = list(adapter_weights)
        if len(weights) != len(names) or not all(isinstance(w, numbers.Real) for w in weights):
            raise ValueError(
                f"adapter_weights must be one number or one per adapter ({len(names)}), got {adapter_weights!r}"
            )
        for model in self._lora_models().values():
            adapters.set_adapters(model, names, [float(w) for w in weights])

    def get_active_adapters(self) -> list[str]:
        return next((adapters.active_adapters(m) for m in self._lora_models().values() if adapters.lora_layers(m)), [])

    def get_list_adapters(self) -> dict[str, list[str]]:
        return {c: adapters.adapter_names(m) for c, m in self._lora_models().items() if adapters.adapter_names(m)}

    def disable_lora(self) -> None:
        """Run the base model (the adapters stay loaded)."""
        for model in self._lora_models().values():
            adapters.set_enabled(model, False)

    def enable_lora(self) -> None:
        for model in self._lora_models().values():
            adapters.set_enabled(model, True)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for model in self._lora_models().values():
            adapters.check_adapter_names(model, names)
            for name in names:
                adapters.delete_adapter(model, name)

    def fuse_lora(
        self,
        components: list[str] | None = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
    ) -> None:
        """Merge the active adapters (or `adapter_names`) into the denoiser's weights, scaled by `lora_scale`:
        sampling then costs what the base model costs. `safe_fusing` refuses weights that would turn NaN."""
        if not isinstance(lora_scale, numbers.Real):
            raise ValueError(f"lora_scale must be a number, got {lora_scale!r}")
        for model in self._lora_models(components).values():
            if adapters.is_fused(model):
                raise ValueError("LoRA is already fused: call unfuse_lora() first")
            adapters.fuse(model, float(lora_scale), safe_fusing, adapter_names)

    def unfuse_lora(self, components: list[str] | None = None) -> None:
        """Undo `fuse_lora`: the base weights again (within float rounding), the adapters still loaded."""
        for model in self._lora_models(components).values():
            adapters.unfuse(model)

    def unload_lora_weights(self) -> None:
        """Remove every adapter; a fused one stays in the weights (diffusers' fuse → unload pattern)."""
        for model in self._lora_models().values():
            adapters.unload(model)

    def save_lora_weights(
        self, save_directory: str | os.PathLike, adapter_name: str | None = None, base_model: str | None = None
    ) -> str:
        """Write one loaded adapter (default: the only one) as `<save_directory>/pytorch_lora_weights.safetensors`
        in diffusers' layout; returns the file's path."""
        components = {}
        for component, model in self._lora_models().items():
            names = adapters.adapter_names(model)
            if not names:
                continue
            if adapter_name is None and len(names) > 1:
                raise ValueError(f"several adapters are loaded ({names}): pass adapter_name")
            name = adapter_name or names[0]
            base = files.base_info(model, base_model or self._lora_base_name())
            config = model.peft_config[name]
            components[component] = (adapters.adapter_state_dict(model, name), config, base)
        if not components:
            raise ValueError("no LoRA adapter is loaded: nothing to save")
        path = os.path.join(os.fspath(save_directory), files.LORA_WEIGHT_NAME)
        files.save_adapter_file(path, components)
        return path

    def _lora_base_name(self) -> str | None:
        return getattr(getattr(self, "config", None), "_name_or_path", None) or None
