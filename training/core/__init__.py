"""The shared trainer core: flags, accelerate setup, data, EMA, checkpoints, logging, validation, model card, hub."""

from .args import add_common_args, validate_common_args
from .checkpoint import list_checkpoints, resolve_checkpoint
from .reporting import image_grid, plot_loss_curve, read_metrics
from .trainer import SUMMARY_FILE, Trainer, adamw, create_accelerator

__all__ = [
    "SUMMARY_FILE",
    "Trainer",
    "adamw",
    "add_common_args",
    "create_accelerator",
    "image_grid",
    "list_checkpoints",
    "plot_loss_curve",
    "read_metrics",
    "resolve_checkpoint",
    "validate_common_args",
]
