"""Our samplers by short name, configured from any DDPM-family scheduler config (for command lines)."""

from __future__ import annotations

from ..options import SCHEDULER_NAMES
from .scheduling_ddim_eta import DDIMEtaScheduler
from .scheduling_ddpm_ancestral import DDPMAncestralScheduler
from .scheduling_dpmsolver_2m import DPMSolver2MScheduler


def scheduler_from_name(name: str, config: dict, **overrides):
    """`"ddpm"` (ancestral), `"ddim"` (η = 0) or `"dpmsolver"` (DPM-Solver++(2M)) with the noise schedule and
    prediction type of `config`, "trailing" timestep spacing (start at t = T − 1, what few steps need) and, for
    the solver, x̂_0 clipping carried over: `clip_sample=True` with range 1 becomes `thresholding=True` with
    `sample_max_value=1`, the same operation (DPM-Solver++ has no `clip_sample`; pixel-space models need it).
    `overrides` go to `from_config` last."""
    config = dict(config)
    defaults = {"timestep_spacing": "trailing", "steps_offset": 0}
    if name == "ddpm":
        cls = DDPMAncestralScheduler
    elif name == "ddim":
        cls = DDIMEtaScheduler
    elif name == "dpmsolver":
        cls = DPMSolver2MScheduler
        if config.get("clip_sample") and not config.get("thresholding") and config.get("clip_sample_range", 1.0) == 1:
            defaults.update(thresholding=True, sample_max_value=1.0)
    else:
        raise ValueError(f"scheduler name must be one of {SCHEDULER_NAMES}, got {name!r}")
    return cls.from_config(config, **{**defaults, **overrides})
