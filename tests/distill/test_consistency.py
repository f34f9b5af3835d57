"""The distillation pieces: the parameterisation matches LCMScheduler (so a student samples with it), the boundary
condition holds, the teacher solvers agree where they must and differ where they must not, the losses, the guidance
embedding, the student builders, and one UNet pass per step for guided students."""

import pytest
import torch
from diffusers import LCMScheduler, UNet2DModel

from custom_pipelines.distill.consistency import (
    boundary_scalings,
    consistency_function,
    consistency_loss,
    default_huber_c,
    skipping_grid,
)
from custom_pipelines.distill.guidance_embedding import GuidanceEmbeddedUNet2DModel, guidance_scale_embedding
from custom_pipelines.distill.solvers import ddim_step, dpmsolver_2s_step, teacher_ode_step
from custom_pipelines.distill.teacher import Teacher, build_student_pipeline, build_student_scheduler
from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler


def ddpm_scheduler(variant="ddpm-tiny-8", **overrides):
    config = load_component_config(variant, "scheduler", "scheduler_config.json")
    return DDPMAncestralScheduler.from_config(config, **overrides)


def unconditional_teacher(prediction_type="epsilon"):
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(load_component_config("ddpm-tiny-8", "unet"))
    pipe = UnconditionalDiffusionPipeline(unet=unet, scheduler=ddpm_scheduler(prediction_type=prediction_type))
    return Teacher(pipe, "unconditional")


def class_teacher():
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(load_component_config("cfg-tiny-8", "unet"))
    scheduler = DDPMAncestralScheduler.from_config(
        load_component_config("cfg-tiny-8", "scheduler", "scheduler_config.json")
    )
    return Teacher(ClassConditionalDiffusionPipeline(unet=unet, scheduler=scheduler), "class")


def test_skipping_grid_is_lcmschedulers_original_timesteps():
    grid, k = skipping_grid(1000, 50)
    assert k == 20 and grid[0] == 19 and grid[-1] == 999 and len(grid) == 50
    scheduler = LCMScheduler(original_inference_steps=50)
    scheduler.set_timesteps(50)
    assert sorted(scheduler.timesteps.tolist()) == grid.tolist()
    with pytest.raises(ValueError, match="num_ddim_timesteps must be an int in \\[1, 100\\]"):
        skipping_grid(100, 101)


@pytest.mark.parametrize("scaling", [10.0, 1.0])
def test_boundary_scalings_match_lcmscheduler(scaling):
    scheduler = LCMScheduler(timestep_scaling=scaling)
    timesteps = torch.tensor([0, 1, 19, 250, 999])
    c_skip, c_out = boundary_scalings(timesteps, scaling)
    for i, t in enumerate(timesteps.tolist()):
        expected_skip, expected_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip[i].item() == pytest.approx(expected_skip, rel=1e-6)
        assert c_out[i].item() == pytest.approx(expected_out, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_boundary_condition_f_of_x_at_t_min_is_x(prediction_type):
    """f(x, 0) = x whatever the network says (Song et al. 2023, eq. 7); away from 0, f is x̂_0 mostly."""
    scheduler = LCMScheduler(prediction_type=prediction_type)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    output = 10 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    f0 = consistency_function(output, x, torch.zeros(3, dtype=torch.long), scheduler.alphas_cumprod, prediction_type)
    torch.testing.assert_close(f0, x, rtol=0, atol=1e-6)
    f = consistency_function(output, x, torch.full((3,), 500), scheduler.alphas_cumprod, prediction_type)
    assert (f - x).abs().max() > 1.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_consistency_function_is_the_lcmscheduler_one_step_output(prediction_type):
    """One LCMScheduler step (the last one: no noise) returns exactly f(x_t, t): training and sampling agree."""
    scheduler = LCMScheduler(prediction_type=prediction_type, original_inference_steps=10)
    scheduler.set_timesteps(1)
    t = int(scheduler.timesteps[0])
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    output = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    denoised = scheduler.step(output, t, x).prev_sample
    f = consistency_function(output, x, torch.full((2,), t), scheduler.alphas_cumprod, prediction_type)
    torch.testing.assert_close(f, denoised, rtol=1e-5, atol=1e-6)


def test_solvers_agree_on_a_constant_x0_and_differ_otherwise():
    """With x̂_0 constant along the path the ODE's exact solution is the DDIM step, so DPM-Solver++(2S) equals it;
    for an x̂_0 that changes with t they must differ (the second-order correction acts)."""
    alphas = ddpm_scheduler("ddpm-digits-16").alphas_cumprod
    x_t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t, s = torch.tensor([799, 799]), torch.tensor([599, 599])
    target = torch.full_like(x_t, 0.3)
    constant = lambda x, tt: target  # noqa: E731  (x-prediction of one point)
    a = ddim_step(constant, x_t, t, s, alphas, "sample")
    b = dpmsolver_2s_step(constant, x_t, t, s, alphas, "sample")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    expected = (
        alphas[599].sqrt() * 0.3
        + (1 - alphas[599]).sqrt() * (x_t - alphas[799].sqrt() * 0.3) / (1 - alphas[799]).sqrt()
    )
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-5)
    moving = lambda x, tt: 0.5 * x  # noqa: E731
    assert (
        ddim_step(moving, x_t, t, s, alphas, "sample") - dpmsolver_2s_step(moving, x_t, t, s, alphas, "sample")
    ).abs().max() > 1e-3
    with pytest.raises(ValueError, match="teacher solver must be one of"):
        teacher_ode_step("euler", constant, x_t, t, s, alphas, "sample")


def test_losses():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert consistency_loss(a, b, "l2").item() == pytest.approx(1.0)
    # pseudo-Huber: √(16 + c²) − c per sample
    c = default_huber_c(a.shape)
    assert c == pytest.approx(0.00054 * 4)
    assert consistency_loss(a, b, "huber").item() == pytest.approx((16 + c**2) ** 0.5 - c, rel=1e-6)
    assert consistency_loss(a, a, "huber").item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        consistency_loss(a, b, "l1")


def test_guidance_embedding_values_and_shape():
    emb = guidance_scale_embedding(torch.tensor([0.0, 1.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(ValueError, match="even int"):
        guidance_scale_embedding(torch.tensor([1.0]), 7)


def test_class_student_starts_as_the_teacher_and_w_changes_its_output_once_trained(tmp_path):
    teacher = class_teacher()
    student = GuidanceEmbeddedUNet2DModel.from_class_conditional(teacher.unet, 16).eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([10, 50]), torch.tensor([1, 2])
    w_lo, w_hi = (guidance_scale_embedding(torch.full((2,), w), 16) for w in (0.0, 3.0))
    with torch.no_grad():
        reference = teacher.unet(x, t, class_labels=labels).sample
        torch.testing.assert_close(student(x, t, class_labels=labels, timestep_cond=w_lo).sample, reference)
        torch.nn.init.normal_(student.guidance_embedding[2].weight, std=0.5)  # as after training
        low = student(x, t, class_labels=labels, timestep_cond=w_lo).sample
        high = student(x, t, class_labels=labels, timestep_cond=w_hi).sample
    assert (low - high).abs().max() > 1e-3
    student.save_pretrained(tmp_path / "unet")
    reloaded = GuidanceEmbeddedUNet2DModel.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t, class_labels=labels, timestep_cond=w_hi).sample, high)
    with pytest.raises(ValueError, match="timestep_cond is required"):
        student(x, t, class_labels=labels)


def test_student_scheduler_has_the_teachers_noise_schedule():
    for prediction_type in ("epsilon", "v_prediction"):
        teacher = unconditional_teacher(prediction_type)
        scheduler = build_student_scheduler(teacher, 10)
        assert isinstance(scheduler, LCMScheduler) and scheduler.config.original_inference_steps == 10
        assert scheduler.config.prediction_type == prediction_type
        torch.testing.assert_close(scheduler.alphas_cumprod, teacher.pipeline.scheduler.alphas_cumprod.float())
        scheduler.set_timesteps(4)
        assert scheduler.timesteps.tolist() == [99, 79, 49, 29]  # LCMScheduler's picks from the grid 9, 19, …, 99
        with pytest.raises(ValueError, match="is smaller than `num_inference_steps`: 11"):
            scheduler.set_timesteps(11)  # beyond the grid the student was distilled on (our pipelines say so first)


def count_calls(unet):
    calls = []
    original = unet.forward

    def counted(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    unet.forward = counted
    return calls


def test_guided_student_runs_one_unet_pass_per_step_at_any_w():
    teacher = class_teacher()
    student = GuidanceEmbeddedUNet2DModel.from_class_conditional(teacher.unet, 16).eval()
    torch.nn.init.normal_(student.guidance_embedding[2].weight, std=0.5)
    pipe = build_student_pipeline(teacher, student, build_student_scheduler(teacher, 10))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, ClassConditionalDiffusionPipeline)
    calls = count_calls(student)
    images = {}
    for w in (1.0, 2.0, 4.0):
        generator = torch.Generator().manual_seed(0)
        images[w] = pipe(
            [1, 2, 3], guidance_scale=w, num_inference_steps=2, generator=generator, output_type="pt"
        ).images
    assert calls == [3] * 6  # 2 steps × 3 scales, one pass over the 3 images each (CFG would be 2 × 6 rows)
    assert (images[2.0] - images[4.0]).abs().max() > 1e-4  # the guidance scale reaches the network
    teacher_calls = count_calls(teacher.unet)
    teacher.pipeline([1, 2, 3], guidance_scale=2.0, num_inference_steps=2, output_type="pt")
    assert teacher_calls == [6, 6]  # the teacher: CFG's doubled batch


def test_img2img_pipeline_takes_a_guided_student_with_strength_and_few_steps():
    """SDEdit with a student: strength 0.5 of 4 student steps runs the last 2 of them, one UNet pass each."""
    from custom_pipelines.pipelines.pipeline_img2img import DiffusionImg2ImgPipeline

    teacher = class_teacher()
    student = GuidanceEmbeddedUNet2DModel.from_class_conditional(teacher.unet, 16).eval()
    pipe = DiffusionImg2ImgPipeline(unet=student, scheduler=build_student_scheduler(teacher, 10))
    pipe.set_progress_bar_config(disable=True)
    calls = count_calls(student)
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {}
    for strength in (0.5, 0.25):
        generator = torch.Generator().manual_seed(0)
        out[strength] = pipe(image, strength=strength, class_labels=[3, 4], guidance_scale=2.0, num_inference_steps=4,
                             generator=generator, output_type="pt").images  # fmt: skip
    assert calls == [2, 2, 2]  # 2 steps at strength 0.5, 1 at 0.25; one pass of the 2 images each
    assert out[0.5].shape == (2, 1, 8, 8) and (out[0.5] - out[0.25]).abs().max() > 1e-4
