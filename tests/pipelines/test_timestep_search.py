import itertools
import json
import stat

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, ModelMixin, UniPCMultistepScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from custom_pipelines import (
    ClassConcatUNet2DModel,
    ClassConditionalDiffusionPipeline,
    DDIMEtaScheduler,
    DPMSolver2MScheduler,
    UnconditionalDiffusionPipeline,
    optimize_timesteps,
)
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.pipelines.timestep_search import first_order_jump_costs, shortest_schedule
from custom_pipelines.schedulers import scheduler_from_name
from tests.utils import scheduler_config, tiny_unet


def test_shortest_schedule_matches_brute_force():
    rng = np.random.default_rng(0)
    cost = rng.uniform(0.1, 1.0, size=(7, 7))
    for k in range(1, 7):
        nodes, total = shortest_schedule(cost, k)
        best = min(
            (sum(cost[a, b] for a, b in zip((0, *mid), (*mid, 6))), (0, *mid, 6))
            for mid in itertools.combinations(range(1, 6), k - 1)
        )
        assert total == pytest.approx(best[0]) and tuple(nodes) == best[1]


def test_shortest_schedule_known_path_and_bad_input():
    cost = np.full((4, 4), 10.0)
    cost[0, 2], cost[2, 3], cost[0, 1], cost[1, 3] = 1.0, 1.0, 0.5, 5.0
    assert shortest_schedule(cost, 2) == ([0, 2, 3], 2.0)
    assert shortest_schedule(cost, 3)[0] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 3\]"):
        shortest_schedule(cost, 4)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        shortest_schedule(cost, 0)
    with pytest.raises(ValueError, match="square"):
        shortest_schedule(np.ones((3, 4)), 1)
    cost[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        shortest_schedule(cost, 2)


def test_jump_costs_are_zero_along_a_first_order_teacher():
    """States made by exact first-order steps: every adjacent jump reproduces the teacher (cost 0), longer jumps
    do not (the x̂_0 predictions differ from node to node)."""
    scheduler = DPMSolver2MScheduler(solver_order=1)
    scheduler.set_timesteps(6)
    ve = scheduler.sigmas.double().tolist()
    alpha = [1 / np.sqrt(1 + s**2) for s in ve]
    sigma = [s * a for s, a in zip(ve, alpha)]
    x0s = torch.randn(6, 3, 2, 4, generator=torch.Generator().manual_seed(0))
    states = [torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))]
    for i in range(6):  # x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} (e^{−h} − 1) x̂_0^{(i)}, ending at σ = 0
        lam_i, lam_j = -np.log(ve[i]), (np.inf if ve[i + 1] == 0 else -np.log(ve[i + 1]))
        phi = np.expm1(-(lam_j - lam_i))
        states.append((sigma[i + 1] / sigma[i]) * states[-1] - alpha[i + 1] * phi * x0s[i])
    assert torch.equal(states[-1], x0s[-1])  # the last jump lands on x̂_0 itself
    cost = first_order_jump_costs(torch.stack(states), x0s, ve)
    assert cost.shape == (7, 7)
    assert np.allclose(np.diag(cost, k=1), 0, atol=1e-5)
    assert (cost[np.triu_indices(7, k=2)] > 0.1).all()
    assert np.isinf(cost[np.tril_indices(7)]).all()
    with pytest.raises(ValueError, match="expected N states"):
        first_order_jump_costs(torch.stack(states), x0s[:-1], ve)


class MixtureDenoiser(ModelMixin, ConfigMixin):
    """The exact ε-prediction for pixels ~ 0.3 N(−1, 0.5²) + 0.7 N(0.8, 0.5²) i.i.d., as a diffusers model."""

    @register_to_config
    def __init__(self, sample_size: int = 4, in_channels: int = 1, num_train_timesteps: int = 1000):
        super().__init__()
        self.register_buffer("alphas_cumprod", DDPMScheduler(num_train_timesteps).alphas_cumprod.double())

    def forward(self, x, t):
        means, weights, std = torch.tensor([-1.0, 0.8], dtype=x.dtype), torch.tensor([0.3, 0.7], dtype=x.dtype), 0.5
        a = self.alphas_cumprod[int(t)].to(x.dtype)
        var = a * std**2 + 1 - a
        log_post = torch.log(weights) - 0.5 * (x[..., None] - a.sqrt() * means) ** 2 / var
        x0_k = means + a.sqrt() * std**2 / var * (x[..., None] - a.sqrt() * means)
        x0 = (torch.softmax(log_post, -1) * x0_k).sum(-1)
        return UNet2DOutput(sample=(x - a.sqrt() * x0) / (1 - a).sqrt())


def test_optimized_schedule_beats_uniform_steps_on_an_exact_model():
    """RMS distance to the 500-step DPM-Solver++(2M) solution of the exact ODE, measured: 5 steps 0.110 with the
    optimized schedule vs 0.240 with "trailing" spacing; 8 steps 0.034 vs 0.099."""
    pipe = UnconditionalDiffusionPipeline(unet=MixtureDenoiser().double(), scheduler=DPMSolver2MScheduler())
    pipe.set_progress_bar_config(disable=True)
    x_T = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def solve(**kwargs):
        return pipe(batch_size=256, latents=x_T, output_type="latent", **kwargs).images

    reference = solve(num_inference_steps=500)
    errors = {}
    for k in (5, 8):
        optimized = optimize_timesteps(pipe, k, num_samples=128, batch_size=128, grid_size=100, seed=1)
        assert len(optimized) == k and optimized[0] == 999 and all(np.diff(optimized) < 0)
        errors[k] = [(solve(**s) - reference).pow(2).mean().sqrt().item() for s in (
            {"timesteps": optimized}, {"num_inference_steps": k})]  # fmt: skip
    assert errors[5][0] < 0.6 * errors[5][1] and errors[8][0] < 0.5 * errors[8][1], errors


@pytest.fixture
def tiny_pipe():
    scheduler = DPMSolver2MScheduler.from_config(scheduler_config(), thresholding=True)
    pipe = UnconditionalDiffusionPipeline(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_optimize_timesteps_is_deterministic_and_leaves_the_pipeline_alone(tiny_pipe):
    scheduler = tiny_pipe.scheduler
    first = optimize_timesteps(tiny_pipe, [2, 3], num_samples=8, batch_size=4, grid_size=10)
    again = optimize_timesteps(tiny_pipe, [2, 3], num_samples=8, batch_size=8, grid_size=10)
    assert first == again and set(first) == {2, 3}
    grid = DPMSolver2MScheduler.from_config(scheduler.config, timestep_spacing="trailing")
    grid.set_timesteps(10)
    for k, timesteps in first.items():
        assert len(timesteps) == k and set(timesteps) <= set(grid.timesteps.tolist())
        assert timesteps[0] == scheduler.config.num_train_timesteps - 1
    assert tiny_pipe.scheduler is scheduler and scheduler.num_inference_steps is None
    images = tiny_pipe(batch_size=2, timesteps=first[3], output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_optimize_timesteps_rejects_bad_input(tiny_pipe):
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, grid_size=10\]"):
        optimize_timesteps(tiny_pipe, 11, grid_size=10)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        optimize_timesteps(tiny_pipe, [4, 0], grid_size=10)
    with pytest.raises(ValueError, match=r"grid_size must be in \[1, num_train_timesteps=100\]"):
        optimize_timesteps(tiny_pipe, 4, grid_size=200)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        optimize_timesteps(tiny_pipe, 4, num_samples=0)


def test_class_conditional_pipeline_takes_optimized_timesteps():
    torch.manual_seed(0)
    unet = ClassConcatUNet2DModel.from_config(load_component_config("cfg-tiny-8", "unet")).eval()
    scheduler = scheduler_from_name("dpmsolver", scheduler_config("cfg-tiny-8"))
    pipe = ClassConditionalDiffusionPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    timesteps = optimize_timesteps(pipe, 3, num_samples=6, batch_size=3, grid_size=8, class_labels=[0, 1, 2])
    assert len(timesteps) == 3 and timesteps[0] == scheduler.config.num_train_timesteps - 1
    images = pipe(class_labels=[0, 1], timesteps=timesteps, guidance_scale=2.0, output_type="np").images
    assert images.shape[0] == 2 and np.isfinite(images).all()


def test_pipeline_timesteps_argument(tiny_pipe):
    run = lambda **kw: tiny_pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kw)  # noqa: E731
    default = run(num_inference_steps=3).images
    tiny_pipe.scheduler.set_timesteps(3)
    same = run(timesteps=tiny_pipe.scheduler.timesteps.tolist(), num_inference_steps=50).images  # steps ignored
    assert np.array_equal(default, same)
    other = run(timesteps=[99, 50, 2]).images
    assert np.array_equal(other, run(timesteps=np.array([99, 50, 2])).images)
    assert np.array_equal(other, run(timesteps=torch.tensor([99, 50, 2])).images)
    assert not np.allclose(default, other)
    with pytest.raises(ValueError, match="strictly descending"):
        run(timesteps=[10, 500])
    with pytest.raises(TypeError, match="timesteps must be a list of ints"):
        run(timesteps=[99.0, 10.5])
    tiny_pipe.scheduler = UniPCMultistepScheduler.from_config(scheduler_config())  # takes no custom timesteps
    with pytest.raises(ValueError, match="does not take custom timesteps"):
        run(timesteps=[99, 10])


def test_scheduler_from_name_carries_clipping_over():
    config = scheduler_config()
    solver = scheduler_from_name("dpmsolver", {**config, "clip_sample": True})
    assert isinstance(solver, DPMSolver2MScheduler)
    assert solver.config.thresholding and solver.config.sample_max_value == 1.0
    assert solver.config.timestep_spacing == "trailing"
    assert not scheduler_from_name("dpmsolver", {**config, "clip_sample": False}).config.thresholding
    assert isinstance(scheduler_from_name("ddim", config), DDIMEtaScheduler)
    with pytest.raises(ValueError, match="scheduler name must be one of"):
        scheduler_from_name("euler", config)


def test_cli_writes_json_and_sample_script_uses_it(tmp_path, tiny_pipe):
    from custom_pipelines.optimize_timesteps import main as optimize_main
    from training.sample import main as sample_main
    from training.sample import parse_args as sample_args

    tiny_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "timesteps.json"
    argv = ["--pipeline", str(tmp_path / "pipe"), "--num_inference_steps", "2", "3", "--num_samples", "4",
            "--grid_size", "8", "--batch_size", "4", "--output", str(out)]  # fmt: skip
    assert optimize_main(argv) == 0
    saved = json.loads(out.read_text())
    assert set(saved["timesteps"]) == {"2", "3"} and saved["grid_size"] == 8
    timesteps = [str(t) for t in saved["timesteps"]["3"]]
    grid = tmp_path / "grid.png"
    sample_main(sample_args(["--pipeline", str(tmp_path / "pipe"), "--output", str(grid), "--num_images", "4",
                             "--scheduler", "dpmsolver", "--timesteps", *timesteps,
                             "--torch_dtype", "bf16"]))  # fmt: skip
    assert grid.is_file() and stat.S_IMODE(grid.stat().st_mode) != 0o600
    grid.unlink()
    common = ["--pipeline", str(tmp_path / "pipe"), "--output", str(grid), "--num_images", "4"]
    sample_main(
        sample_args([*common, "--scheduler", "dpmsolver", "--timesteps_file", str(out), "--num_inference_steps", "2"])
    )
    assert grid.is_file()
    with pytest.raises(ValueError, match="does not exist"):
        sample_args(["--pipeline", "x", "--output", "y", "--timesteps_file", str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match=r"has schedules for num_inference_steps \['2', '3'\]"):
        sample_args(["--pipeline", "x", "--output", "y", "--timesteps_file", str(out), "--num_inference_steps", "5"])
