"""Behaviour every scheduler shares: save/load, diffusers interop, option validation, q(x_t | x_0), pipelines."""

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)

from custom_pipelines.schedulers import DDIMEtaScheduler, DDPMAncestralScheduler, DPMSolver2MScheduler
from tests.schedulers.scheduler_test_utils import SCHEDULER_CLASSES, arange_sample, dummy_model
from tests.utils import scheduler_config, tiny_unet

COMMON_OPTIONS = [
    {},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction"},
    {"beta_schedule": "cosine"},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "sigmoid"},
    {"num_train_timesteps": 20, "trained_betas": [0.01 * (i + 1) for i in range(20)]},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
]
CLASS_OPTIONS = {
    DDPMAncestralScheduler: [
        {"variance_type": v}
        for v in ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
    ]
    + [{"clip_sample": False}, {"clip_sample_range": 0.5}],
    DDIMEtaScheduler: [{"set_alpha_to_one": False}, {"clip_sample": False}, {"clip_sample_range": 0.5}],
    DPMSolver2MScheduler: [
        {"solver_order": 1},
        {"solver_type": "heun"},
        {"lower_order_final": False},
        {"euler_at_final": True},
        {"use_karras_sigmas": True},
        {"final_sigmas_type": "sigma_min"},
        {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"},
        {"variance_type": "learned_range"},
    ],
}
ROUND_TRIP_CASES = [(cls, options) for cls in SCHEDULER_CLASSES for options in COMMON_OPTIONS + CLASS_OPTIONS[cls]]


def model_for(scheduler):
    def model(x, t):
        out = dummy_model(x, t)
        if getattr(scheduler.config, "variance_type", None) == "learned":
            return torch.cat([out, torch.full_like(out, 1e-3)], dim=1)
        if getattr(scheduler.config, "variance_type", None) == "learned_range":
            return torch.cat([out, torch.full_like(out, 0.3)], dim=1)
        return out

    return model


def step_outputs(scheduler, steps=6):
    scheduler.set_timesteps(steps)
    generator, model, x = torch.Generator().manual_seed(0), model_for(scheduler), arange_sample()
    extra = {"eta": 0.5} if isinstance(scheduler, (DDIMEtaScheduler, DDIMScheduler)) else {}
    outputs = []
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator, **extra).prev_sample
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("cls, options", ROUND_TRIP_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_save_load_round_trip_gives_identical_steps(cls, options, tmp_path):
    scheduler = cls(**options)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = cls.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    before, after = step_outputs(scheduler), step_outputs(loaded)
    assert all(torch.isfinite(x).all() for x in before)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES)
def test_cosine_alias_is_stored_under_the_diffusers_name(cls):
    scheduler = cls(beta_schedule="cosine")
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert torch.equal(DDPMScheduler.from_config(scheduler.config).alphas_cumprod, scheduler.alphas_cumprod)


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES)
def test_class_attributes(cls):
    scheduler = cls(num_train_timesteps=50)
    assert cls.config_name == "scheduler_config.json" and cls.order == 1 and scheduler.init_noise_sigma == 1.0
    assert len(scheduler) == 50
    assert {"DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"} <= set(cls._compatibles)
    assert DDIMScheduler in scheduler.compatibles
    x = arange_sample()
    assert scheduler.scale_model_input(x, 10) is x


SHARED_KEYS = ["num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "timestep_spacing"]
INTEROP_CONFIG = {
    "num_train_timesteps": 500,
    "beta_start": 0.0002,
    "beta_end": 0.03,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}
DIFFUSERS_CLASSES = [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler]


@pytest.mark.parametrize("ours_cls", SCHEDULER_CLASSES)
@pytest.mark.parametrize("theirs_cls", DIFFUSERS_CLASSES)
def test_from_config_interop_both_ways(ours_cls, theirs_cls):
    ours = ours_cls(**INTEROP_CONFIG)
    theirs = theirs_cls.from_config(ours.config)
    assert {k: theirs.config[k] for k in SHARED_KEYS} == INTEROP_CONFIG
    assert torch.equal(theirs.alphas_cumprod, ours.alphas_cumprod)
    back = ours_cls.from_config(theirs_cls(**INTEROP_CONFIG).config)
    assert {k: back.config[k] for k in SHARED_KEYS} == INTEROP_CONFIG
    assert torch.equal(back.alphas_cumprod, ours.alphas_cumprod)


@pytest.mark.parametrize(
    "ours_cls, theirs_cls, config",
    [
        (DDPMAncestralScheduler, DDPMScheduler, {"variance_type": "fixed_large", "clip_sample": False}),
        (DDIMEtaScheduler, DDIMScheduler, {"set_alpha_to_one": False, "steps_offset": 1, "clip_sample_range": 2.0}),
        (
            DPMSolver2MScheduler,
            DPMSolverMultistepScheduler,
            {"solver_type": "heun", "final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"},
        ),
    ],
)
def test_from_config_means_the_same_thing(ours_cls, theirs_cls, config):
    """A config moved between the libraries samples the same way (DPM: to its float32/float64 tolerance).

    Keys left at their default are not carried over (diffusers' `_use_default_values`): each class then uses its
    own default, which is why the DPM case names its timestep_spacing."""
    theirs = theirs_cls(**config)
    ours = ours_cls.from_config(theirs.config)
    a, b = step_outputs(ours)[-1], step_outputs(theirs)[-1]
    assert (a - b).abs().max() < 1e-5
    again = theirs_cls.from_config(ours.config)
    assert all(again.config[k] == theirs.config[k] for k in config)


def test_ddpm_config_moves_to_ddim_and_dpm_solver():
    """The training scheduler's config drives every sampler (extra keys are dropped silently by diffusers)."""
    ddpm = DDPMAncestralScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    ddim = DDIMEtaScheduler.from_config(ddpm.config)
    dpm = DPMSolver2MScheduler.from_config(ddpm.config, timestep_spacing="trailing")
    assert ddim.config.beta_schedule == dpm.config.beta_schedule == "squaredcos_cap_v2"
    assert dpm.config.variance_type == "learned_range" and dpm.config.timestep_spacing == "trailing"
    assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod) and torch.equal(
        dpm.alphas_cumprod, ddpm.alphas_cumprod
    )


COMMON_INVALID = [
    ({"beta_schedule": "quadratic"}, "beta_schedule must be one of"),
    ({"prediction_type": "x0"}, "prediction_type must be one of"),
    ({"timestep_spacing": "uniform"}, "timestep_spacing must be one of"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
    ({"thresholding": True, "sample_max_value": 0.0}, "sample_max_value"),
    ({"steps_offset": -1}, "steps_offset"),
]
CLASS_INVALID = {
    DDPMAncestralScheduler: [({"variance_type": "big"}, "variance_type"), ({"clip_sample_range": 0.0}, "clip_sample")],
    DDIMEtaScheduler: [({"clip_sample_range": -1.0}, "clip_sample_range")],
    DPMSolver2MScheduler: [
        ({"solver_order": 3}, "solver_order"),
        ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ({"solver_type": "euler"}, "solver_type"),
        ({"final_sigmas_type": "max"}, "final_sigmas_type"),
        ({"variance_type": "big"}, "variance_type"),
    ],
}
INVALID_CASES = [(cls, kw, match) for cls in SCHEDULER_CLASSES for kw, match in COMMON_INVALID + CLASS_INVALID[cls]]


@pytest.mark.parametrize("cls, kwargs, match", INVALID_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_invalid_options_raise_in_init(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


SET_TIMESTEPS_INVALID = [
    ({"num_inference_steps": 0}, r"num_inference_steps must be in \[1, num_train_timesteps=1000\], got 0"),
    ({"num_inference_steps": -3}, "num_inference_steps must be in"),
    ({"num_inference_steps": 1001}, "num_inference_steps must be in"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be an integer"),
    ({"num_inference_steps": None}, "exactly one of"),
    ({"num_inference_steps": 10, "timesteps": [900, 100]}, "exactly one of"),
    ({"timesteps": [100, 900]}, "strictly descending"),
    ({"timesteps": [1000, 500]}, r"\[0, 999\]"),
    ({"timesteps": [500.0, 100.0]}, "integers"),
    ({"timesteps": []}, "non-empty"),
]


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES)
@pytest.mark.parametrize("kwargs, match", SET_TIMESTEPS_INVALID)
def test_invalid_set_timesteps_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls().set_timesteps(**kwargs)


def test_spacing_specific_set_timesteps_errors():
    with pytest.raises(ValueError, match="past num_train_timesteps"):
        DDPMAncestralScheduler(steps_offset=1).set_timesteps(1000)
    with pytest.raises(ValueError, match="'leading' spacing"):
        DPMSolver2MScheduler(timestep_spacing="leading").set_timesteps(1000)
    with pytest.raises(ValueError, match="repeated"):
        DPMSolver2MScheduler(timestep_spacing="linspace").set_timesteps(1000)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolver2MScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 100])


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES)
def test_add_noise_has_the_forward_process_moments(cls):
    scheduler, t = cls(), 500
    alpha_bar = scheduler.alphas_cumprod[t].item()
    x0 = torch.full((200_000,), 0.7)
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    xt = scheduler.add_noise(x0, noise, torch.tensor([t]))
    std_error = ((1 - alpha_bar) / 200_000) ** 0.5
    assert abs(xt.mean().item() - alpha_bar**0.5 * 0.7) < 5 * std_error
    assert xt.var().item() == pytest.approx(1 - alpha_bar, rel=0.02)
    batch, noise_batch, timesteps = arange_sample(), torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    expected = DDPMScheduler().add_noise(batch, noise_batch, timesteps)
    assert torch.equal(scheduler.add_noise(batch, noise_batch, timesteps), expected)
    assert torch.equal(
        scheduler.get_velocity(batch, noise_batch, timesteps),
        DDPMScheduler().get_velocity(batch, noise_batch, timesteps),
    )


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES)
def test_add_noise_rejects_out_of_range_timesteps(cls):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        cls().add_noise(x, x, torch.tensor([0, 1000]))


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES)
def test_runs_inside_diffusers_ddpm_pipeline(cls):
    extra = {"timestep_spacing": "trailing"} if cls is DPMSolver2MScheduler else {}
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=cls.from_config(scheduler_config(), **extra))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert type(pipe.scheduler) is cls
    assert images.images.shape == (2, 8, 8, 1) and images.images.min() >= 0 and images.images.max() <= 1


def test_learned_range_runs_inside_diffusers_ddpm_pipeline():
    scheduler = DDPMAncestralScheduler.from_config(scheduler_config(), variance_type="learned_range")
    pipe = DDPMPipeline(unet=tiny_unet(out_channels=2), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 1)


def test_runs_inside_diffusers_ddim_pipeline():
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler.from_config(scheduler_config()))
    pipe.scheduler = DDIMEtaScheduler.from_config(scheduler_config())  # DDIMPipeline.__init__ converts to DDIM
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    images = pipe(batch_size=2, num_inference_steps=2, eta=1.0, generator=generator, output_type="np").images
    assert type(pipe.scheduler) is DDIMEtaScheduler
    assert images.shape == (2, 8, 8, 1) and 0 <= images.min() and images.max() <= 1
