"""Every diffusers scheduler swapped into our pixel pipelines with `from_config` samples the data, not noise; and ours
do the same inside diffusers' own pipelines. The UNet is the exact denoiser of 64 digits (`OracleDenoiser`), so a
working sampler ends next to one of them and a broken one (e.g. x_T scaled by σ_max of the training grid instead
of the chosen one) ends far away."""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline

from custom_pipelines import (
    ClassConditionalDiffusionPipeline,
    DDIMEtaScheduler,
    DDPMAncestralScheduler,
    DPMSolver2MScheduler,
    UnconditionalDiffusionPipeline,
)
from custom_pipelines.hub.configs import load_component_config
from tests.pipelines.oracle_denoiser import OracleDenoiser, nearest_data_rmse

# every diffusers scheduler for ε-prediction pixel models (DPMSolverSDE needs torchsde, not installed here)
DIFFUSERS_SCHEDULERS = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
    "LCMScheduler", "TCDScheduler",
]  # fmt: skip
STEPS = 20
GOOD_RMSE = 0.08  # the default sampler lands within ≈ 0.01-0.03 of a data image; saturated noise is ≈ 0.5


@pytest.fixture(scope="module")
def oracle():
    return OracleDenoiser().eval()


@pytest.fixture(scope="module")
def scheduler_config():
    return load_component_config("ddpm-digits-16", "scheduler", "scheduler_config.json")


def sample(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(batch_size=8, num_inference_steps=STEPS, generator=generator, output_type="pt", **kwargs).images


def test_the_default_scheduler_reaches_the_data(oracle, scheduler_config):
    pipe = UnconditionalDiffusionPipeline(unet=oracle, scheduler=DDPMAncestralScheduler.from_config(scheduler_config))
    assert nearest_data_rmse(oracle, sample(pipe)).max() < GOOD_RMSE


@pytest.mark.parametrize("name", DIFFUSERS_SCHEDULERS)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_diffusers_scheduler_swapped_in_samples_the_data(oracle, scheduler_config, name, spacing):
    cls = getattr(diffusers, name)
    scheduler = cls.from_config(scheduler_config, timestep_spacing=spacing)
    pipe = UnconditionalDiffusionPipeline(unet=oracle, scheduler=scheduler)
    oracle.input_stds.clear()
    images = sample(pipe)
    assert torch.isfinite(images).all()
    # the first network input is (scaled) x_T: unit variance, as in training at t ≈ T, for every scheduler
    assert 0.7 < oracle.input_stds[0] < 1.3, f"{name} ({spacing}): first UNet input std {oracle.input_stds[0]:.3g}"
    if name == "PNDMScheduler" and spacing != "leading":
        # diffusers' PLMS steps back by T // N whatever the spacing, so only "leading" works, in diffusers' own
        # PNDMPipeline too: there we must give exactly what diffusers gives
        stock_scheduler = cls.from_config(scheduler_config, timestep_spacing=spacing)
        stock = diffusers.PNDMPipeline(unet=oracle, scheduler=stock_scheduler)
        stock.set_progress_bar_config(disable=True)
        expected = stock(batch_size=8, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                         output_type="np").images  # fmt: skip
        torch.testing.assert_close(images.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5, rtol=0)
        return
    rmse = nearest_data_rmse(oracle, images)
    assert rmse.max() < GOOD_RMSE, f"{name} ({spacing}): samples are {rmse.max():.3f} RMSE from every data image"


def test_euler_swap_uses_the_noise_scale_of_the_chosen_timesteps(oracle, scheduler_config):
    """The bug this file guards against: σ-space schedulers know init_noise_sigma only after set_timesteps."""
    scheduler = diffusers.EulerDiscreteScheduler.from_config(scheduler_config)
    assert scheduler.init_noise_sigma > 1000  # σ_max of the 1000-step training grid (cosine schedule)
    pipe = UnconditionalDiffusionPipeline(unet=oracle, scheduler=scheduler)
    seen = []
    sample(pipe, callback_on_step_end=lambda p, i, t, kw: seen.append(float(kw["latents"].abs().max())) or {})
    assert scheduler.init_noise_sigma < 100 and max(seen) < 10 * scheduler.init_noise_sigma


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler"])
def test_class_conditional_pipeline_takes_swapped_schedulers_too(oracle, scheduler_config, name):
    """The CFG pipeline shares the loop; the oracle ignores the class, so guidance changes nothing it sees."""
    unet = OracleDenoiser(num_class_embeds=11).eval()  # looks like diffusers' embedding-conditioned UNet
    scheduler = getattr(diffusers, name).from_config(scheduler_config)
    pipe = ClassConditionalDiffusionPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 1, 2, 3], guidance_scale=2.0, num_inference_steps=STEPS, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert nearest_data_rmse(unet, images).max() < GOOD_RMSE


@pytest.mark.parametrize("cls", [DDPMAncestralScheduler, DDIMEtaScheduler, DPMSolver2MScheduler])
@pytest.mark.parametrize("stock", [DDPMPipeline, DDIMPipeline])
def test_our_schedulers_inside_diffusers_pipelines(oracle, scheduler_config, cls, stock):
    extra = {"thresholding": True, "sample_max_value": 1.0} if cls is DPMSolver2MScheduler else {}
    scheduler = cls.from_config(scheduler_config, timestep_spacing="trailing", **extra)
    pipe = stock(unet=oracle, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"eta": 0.0} if stock is DDIMPipeline else {}
    images = pipe(batch_size=8, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                  output_type="np", **kwargs).images  # fmt: skip
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert nearest_data_rmse(oracle, images).max() < GOOD_RMSE
