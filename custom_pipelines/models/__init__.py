"""Our diffusion model classes and the class-conditioning convention shared by both conditioning methods."""

from .attention import ATTENTION_BACKENDS, resolve_attention_backend, set_attention_backend
from .class_conditioning import (
    CONDITIONING_METHODS,
    class_conditional_unet_config,
    conditioning_method,
    null_class_id,
    num_classes_of,
)
from .unet_class_concat import ClassConcatUNet2DModel

__all__ = [
    "ATTENTION_BACKENDS",
    "CONDITIONING_METHODS",
    "ClassConcatUNet2DModel",
    "class_conditional_unet_config",
    "conditioning_method",
    "null_class_id",
    "num_classes_of",
    "resolve_attention_backend",
    "set_attention_backend",
]
