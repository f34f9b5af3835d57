"""Schedulers: DDPM ancestral sampling with training losses, DDIM with η, DPM-Solver++(2M); beta schedules."""

from .beta_schedules import alphas_cumprod_from_betas, make_beta_schedule
from .common import SchedulerStepOutput
from .registry import SCHEDULER_NAMES, scheduler_from_name
from .scheduling_ddim_eta import DDIMEtaScheduler
from .scheduling_ddpm_ancestral import DDPMAncestralScheduler
from .scheduling_dpmsolver_2m import DPMSolver2MScheduler

__all__ = [
    "DDIMEtaScheduler",
    "DDPMAncestralScheduler",
    "DPMSolver2MScheduler",
    "SCHEDULER_NAMES",
    "SchedulerStepOutput",
    "alphas_cumprod_from_betas",
    "make_beta_schedule",
    "scheduler_from_name",
]
