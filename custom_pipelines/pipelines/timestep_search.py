"""Per-model timestep schedules for few-step sampling, found by dynamic programming over a teacher trajectory.

The method is GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", §4): the
probability-flow ODE trajectories of one model are nearly alike, so a schedule that is good for a few hundred
of them is good for all. We

1. integrate the ODE on a fine grid of `grid_size` timesteps (DPM-Solver++(2M), which at 200 steps is close to
   exact), for `num_samples` start noises, and keep every state x_{g} and every data prediction x̂_0(x_{g});
2. price every jump g → g' (g' later on the grid, the last node being the clean image, σ = 0) by the mean L2
   distance between where one first-order step (DDIM, in DPM-Solver++ form) from the teacher's x_g lands and
   the teacher's own x_{g'}: c(g, g') = E‖(σ_{g'}/σ_g) x_g + α_{g'} (1 − e^{−h}) x̂_0(x_g) − x_{g'}‖, no extra
   network evaluations needed;
3. take the cheapest path of exactly K jumps from the first grid point (t = T − 1) to σ = 0 (dynamic programming,
   O(K · grid²)). Its K start points are the K-step schedule, one network evaluation each.

The schedule is then used with any scheduler that takes `timesteps` (DPM-Solver++(2M) gains most):
`pipe(timesteps=optimize_timesteps(pipe, 8))`. On the `make demo` digits model, 8 such steps of DPM-Solver++(2M)
give a lower digits-FID than 50 DDIM steps (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..schedulers import DPMSolver2MScheduler, scheduler_from_name
from .utils import check_positive_int, sample_images

logger = logging.getLogger(__name__)


def shortest_schedule(cost: np.ndarray, num_steps: int) -> tuple[list[int], float]:
    """The path 0 → N−1 of exactly `num_steps` forward jumps (i < j) with the least total `cost[i, j]`.

    Args:
        cost (`np.ndarray` of shape `(N, N)`): cost of the jump i → j; entries with j <= i are ignored.
        num_steps (`int`): the number of jumps, in [1, N − 1].

    Returns:
        `(nodes, total)`: the `num_steps + 1` node indices of the path (starting at 0, ending at N − 1) and its cost.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        raise ValueError(f"cost must be a square (N, N) matrix with N >= 2, got shape {cost.shape}")
    n = cost.shape[0]
    check_positive_int("num_steps", num_steps)
    if num_steps > n - 1:
        raise ValueError(f"num_steps must be in [1, {n - 1}] for a {n}-node grid, got {num_steps}")
    if np.isnan(cost).any():
        raise ValueError("cost contains NaN (the teacher trajectory diverged)")
    forward = np.where(np.triu(np.ones((n, n), dtype=bool), k=1), cost, np.inf)
    best = np.full(n, np.inf)  # best[j]: least cost of reaching node j in k jumps
    best[0] = 0.0
    parents = np.zeros((num_steps + 1, n), dtype=np.int64)
    for k in range(1, num_steps + 1):
        totals = best[:, None] + forward  # totals[i, j]: reach i in k−1 jumps, then jump i → j
        parents[k] = totals.argmin(axis=0)
        best = totals.min(axis=0)
    path = [n - 1]
    for k in range(num_steps, 0, -1):
        path.append(int(parents[k][path[-1]]))
    return path[::-1], float(best[n - 1])


def first_order_jump_costs(
    states: torch.Tensor, x0_predictions: torch.Tensor, sigmas_ve: Sequence[float]
) -> np.ndarray:
    """Summed (over the batch) L2 error of one first-order DPM-Solver++ (= DDIM) jump between any two grid nodes.

    Args:
        states (`torch.Tensor` of shape `(N, B, ...)`): the teacher's x at the N nodes (the last one is x at σ = 0).
        x0_predictions (`torch.Tensor` of shape `(N − 1, B, ...)`): its data predictions x̂_0 at the first N − 1.
        sigmas_ve (`Sequence[float]`): the N variance-exploding noise levels σ_t/α_t of the nodes (last one 0).

    Returns:
        `(N, N)` array; entry [i, j] (i < j) is Σ_b ‖x̂_j − x_j‖ for the jump from the teacher's x_i; others +inf.
    """
    n = states.shape[0]
    if x0_predictions.shape[0] != n - 1 or len(sigmas_ve) != n:
        raise ValueError(
            f"expected N states, N-1 x0 predictions and N sigmas, got {states.shape[0]}, "
            f"{x0_predictions.shape[0]} and {len(sigmas_ve)}"
        )
    ve = np.asarray(sigmas_ve, dtype=np.float64)
    alpha = 1.0 / np.sqrt(1.0 + ve**2)
    sigma = ve * alpha
    lam = np.where(ve > 0, -np.log(np.where(ve > 0, ve, 1.0)), np.inf)
    states = states.flatten(2).float()
    x0_predictions = x0_predictions.flatten(2).float()
    cost = np.full((n, n), np.inf)
    for i in range(n - 1):
        j = np.arange(i + 1, n)
        # x̂_j = (σ_j/σ_i) x_i − α_j (e^{−h} − 1) x̂_0(x_i), h = λ_j − λ_i (e^{−h} = 0 at σ_j = 0)
        a = torch.from_numpy(sigma[j] / sigma[i]).float().to(states.device)
        b = torch.from_numpy(-alpha[j] * np.expm1(-(lam[j] - lam[i]))).float().to(states.device)
        landed = a[:, None, None] * states[i] + b[:, None, None] * x0_predictions[i]
        cost[i, j] = (landed - states[j]).norm(dim=-1).double().sum(dim=-1).cpu().numpy()
    return cost


class _RecordingSolver(DPMSolver2MScheduler):
    """DPM-Solver++(2M) that keeps every (x_t, x̂_0) it steps from, for the teacher trajectory."""

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        output = super().step(model_output, timestep, sample, generator=generator, return_dict=True)
        self.recorded.append((sample.detach().float(), output.pred_original_sample.detach().float()))
        self.recorded_final = output.prev_sample.detach().float()
        return output if return_dict else (output.prev_sample,)


def _teacher_scheduler(scheduler) -> _RecordingSolver:
    """DPM-Solver++(2M) with the pipeline scheduler's noise schedule, prediction type and x̂_0 clipping."""
    config = scheduler_from_name("dpmsolver", scheduler.config).config
    teacher = _RecordingSolver.from_config(config, solver_order=2, use_karras_sigmas=False, final_sigmas_type="zero")
    teacher.recorded = []
    return teacher


def optimize_timesteps(
    pipe,
    num_inference_steps: int | Sequence[int],
    *,
    num_samples: int = 256,
    batch_size: int = 64,
    grid_size: int = 200,
    seed: int = 1,
    class_labels: Sequence[int] | None = None,
    **pipeline_kwargs,
) -> list[int] | dict[int, list[int]]:
    """Find the `num_inference_steps`-step schedule that best follows this pipeline's own ODE trajectories (GITS).

    Args:
        pipe: one of our diffusion pipelines (`UnconditionalDiffusionPipeline`, `ClassConditionalDiffusionPipeline`)
            or any pipeline whose `__call__` takes `timesteps`, `generator`, `output_type` and
            `callback_on_step_end`. Its scheduler's config gives the noise schedule, prediction type and clipping
            (pixel-space models want `thresholding=True` or `clip_sample=True`); the scheduler itself is untouched.
        num_inference_steps (`int` or sequence of `int`): the step count(s) K, each in [1, grid_size].
        num_samples (`int`, defaults to 256): teacher trajectories; the schedule barely changes beyond a few hundred.
        batch_size (`int`, defaults to 64): trajectories per pipeline call.
        grid_size (`int`, defaults to 200): candidate timesteps, "trailing"-spaced (t = T−1, T−1−T/grid, …).
        seed (`int`, defaults to 1): seed of the start noises. Use seeds apart from those you evaluate with.
        class_labels (`Sequence[int]`, *optional*): for class-conditional pipelines, cycled over the samples.
        pipeline_kwargs: passed to every call (e.g. `guidance_scale=2.0`).

    Returns:
        The descending timesteps (a `list[int]` of length K) for an `int`, or `{K: timesteps}` for a sequence.
    """
    steps = [num_inference_steps] if isinstance(num_inference_steps, (int, np.integer)) else list(num_inference_steps)
    for k in steps:
        check_positive_int("num_inference_steps", k)
    check_positive_int("grid_size", grid_size)
    check_positive_int("num_samples", num_samples)
    check_positive_int("batch_size", batch_size)
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps
    if grid_size > num_train_timesteps:
        raise ValueError(f"grid_size must be in [1, num_train_timesteps={num_train_timesteps}], got {grid_size}")
    if max(steps) > grid_size:
        raise ValueError(f"num_inference_steps must be in [1, grid_size={grid_size}], got {max(steps)}")
    parameters = inspect.signature(pipe.__call__).parameters
    for name in ("timesteps", "callback_on_step_end"):
        if name not in parameters:
            raise TypeError(f"pipe: {type(pipe).__name__}.__call__ takes no `{name}`; optimize_timesteps needs it")

    teacher = _teacher_scheduler(pipe.scheduler)
    teacher.set_timesteps(grid_size)
    grid = teacher.timesteps.tolist()
    sigmas_ve = teacher.sigmas.double().tolist()  # grid_size + 1 values, the last 0
    runner = type(pipe)(**{**pipe.components, "scheduler": teacher})
    runner.set_progress_bar_config(disable=True)

    total = np.zeros((grid_size + 1, grid_size + 1))

    def price_batch(_pipe, step_index, _t, tensors):
        if step_index == grid_size - 1:  # the batch's trajectory is complete
            states = torch.stack([s for s, _ in teacher.recorded] + [teacher.recorded_final])
            x0s = torch.stack([x0 for _, x0 in teacher.recorded])
            if not torch.isfinite(states).all():
                raise ValueError("the teacher trajectory is not finite: check the scheduler config (thresholding)")
            total[:] += first_order_jump_costs(states, x0s, sigmas_ve)
            teacher.recorded.clear()
        return tensors

    logger.info(f"optimize_timesteps: {num_samples} trajectories of {grid_size} steps")
    for _ in sample_images(
        runner, num_samples, batch_size, seed, class_labels,
        timesteps=grid, callback_on_step_end=price_batch, **pipeline_kwargs,
    ):  # fmt: skip
        pass
    cost = total / num_samples
    if not np.isfinite(cost[0, -1]):
        raise ValueError("the jump costs are not finite: the teacher trajectory diverged")
    schedules = {}
    for k in steps:
        nodes, path_cost = shortest_schedule(cost, k)
        schedules[k] = [grid[node] for node in nodes[:-1]]
        logger.info(f"optimize_timesteps: K={k} cost {path_cost:.4f} timesteps {schedules[k]}")
    return schedules[steps[0]] if isinstance(num_inference_steps, (int, np.integer)) else schedules
