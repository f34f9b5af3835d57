"""Helpers shared by the scheduler tests (imported as a plain module, not a conftest)."""

import torch

from custom_pipelines.schedulers.scheduling_ddim_eta import DDIMEtaScheduler
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from custom_pipelines.schedulers.scheduling_dpmsolver_2m import DPMSolver2MScheduler

SCHEDULER_CLASSES = [DDPMAncestralScheduler, DDIMEtaScheduler, DPMSolver2MScheduler]


def arange_sample(batch: int = 2, channels: int = 3, size: int = 8) -> torch.Tensor:
    """A deterministic sample in [-1, 1) shaped like a small image batch."""
    n = batch * channels * size * size
    return (torch.arange(n, dtype=torch.float32) / n * 2 - 1).reshape(batch, channels, size, size)


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """The fixed 'network' of the frozen-loop tests: output = x_t · t / (t + 1)."""
    t = int(t)
    return sample * t / (t + 1)
