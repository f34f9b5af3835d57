"""LoRA (Hu et al. 2021) for every diffusion model of ours, with peft as the engine and diffusers' file layout:
adapters on UNet2DModel, UNet2DConditionModel and ClassConcatUNet2DModel alike (`adapters`), their files
(`files`), the pipeline API (`LoraMixin`) and the training flags and hooks (`training`). Names resolve lazily, so
the training scripts' `--help` imports no torch."""

from custom_pipelines.lazy import lazy_exports

_PUBLIC = {
    "DEFAULT_TARGET_MODULES": ".config",
    "default_target_modules": ".config",
    "make_lora_config": ".config",
    "LORA_WEIGHT_NAME": ".files",
    "LoraMixin": ".mixin",
    "add_lora_args": ".training",
    "validate_lora_args": ".training",
    "apply_lora": ".training",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
