"""The shared trainer core: flags, accelerate setup, data, EMA, checkpoints, logging, validation, model card, hub.

Part of the library, so an installed wheel has it; the scripts in `training/` (installed as
`custom_pipelines.scripts`) are thin layers on it. Names are imported on first use, so a script's `--help` (which
needs only `custom_pipelines.training.args`) answers before torch, diffusers and accelerate are imported.
"""

from custom_pipelines.lazy import lazy_exports

_PUBLIC = {
    "SUMMARY_FILE": ".trainer",
    "Code": ".reporting",
    "ModelCardInfo": ".reporting",
    "NonFiniteLossError": ".trainer",
    "Trainer": ".trainer",
    "adamw": ".trainer",
    "add_common_args": ".args",
    "create_accelerator": ".trainer",
    "image_grid": ".reporting",
    "list_checkpoints": ".checkpoint",
    "plot_loss_curve": ".reporting",
    "read_metrics": ".reporting",
    "resolve_checkpoint": ".checkpoint",
    "validate_common_args": ".args",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
