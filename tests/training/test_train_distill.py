"""training/train_distill.py end to end on tiny teachers of every diffusion family: distil a few steps, save, reload
with the standard calls (our class, `load_pipeline`, stock `DiffusionPipeline.from_pretrained(trust_remote_code)`),
sample in 1, 2 and 4 steps; exact resume (in process and after SIGKILLs); clear errors for bad teachers and flags."""

import json
import shutil

import pytest
import torch
from diffusers import DiffusionPipeline, LCMScheduler, UNet2DModel
from safetensors.torch import load_file

from custom_pipelines.hub.configs import load_component_config
from custom_pipelines.hub.loader import load_pipeline
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler
from custom_pipelines.training import list_checkpoints, read_metrics
from training import train_distill


def save_teacher(folder, family="unconditional", prediction_type="epsilon"):
    """A saved, untrained tiny teacher pipeline (the distillation does not care whether it was trained)."""
    torch.manual_seed(0)
    if family == "unconditional":
        unet = UNet2DModel.from_config(load_component_config("ddpm-tiny-8", "unet"))
        config = load_component_config("ddpm-tiny-8", "scheduler", "scheduler_config.json")
        scheduler = DDPMAncestralScheduler.from_config(config, prediction_type=prediction_type)
        pipe = UnconditionalDiffusionPipeline(unet=unet, scheduler=scheduler)
    elif family == "class":
        unet = UNet2DModel.from_config(load_component_config("cfg-tiny-8", "unet"))
        config = load_component_config("cfg-tiny-8", "scheduler", "scheduler_config.json")
        scheduler = DDPMAncestralScheduler.from_config(config, prediction_type=prediction_type)
        pipe = ClassConditionalDiffusionPipeline(unet=unet, scheduler=scheduler)
    elif family == "text":
        from tests.pipelines.test_latent_diffusion import make

        pipe = make("text")
    else:
        raise ValueError(family)
    pipe.save_pretrained(folder)
    return folder


def tiny_args(teacher, output_dir, *extra):
    return [
        "--teacher", str(teacher), "--dataset_name", "digits", "--output_dir", str(output_dir),
        "--train_batch_size", "4", "--max_train_samples", "40", "--max_train_steps", "2", "--checkpointing_steps", "2",
        "--validation_steps", "2", "--num_validation_images", "4", "--num_ddim_timesteps", "10",
        "--logging_steps", "1", "--lr_warmup_steps", "0", "--seed", "0", "--report_to", "none",
        "--num_inference_steps", "2",
        *extra,
    ]  # fmt: skip


def sample_steps(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for steps in (1, 2, 4):
        generator = torch.Generator().manual_seed(0)
        out[steps] = pipe(num_inference_steps=steps, generator=generator, output_type="np", **kwargs).images
    return out


def test_unconditional_v_prediction_student_saves_reloads_and_samples_in_few_steps(tmp_path):
    teacher = save_teacher(tmp_path / "teacher", prediction_type="v_prediction")
    out = tmp_path / "student"
    train_distill.main(train_distill.parse_args(tiny_args(teacher, out, "--teacher_solver", "dpmsolver")))
    assert [m["step"] for m in read_metrics(out)] == [1, 2] and all(m["loss"] > 0 for m in read_metrics(out))
    assert [s for s, _ in list_checkpoints(out)] == [2]
    card = (out / "README.md").read_text()
    assert "UnconditionalDiffusionPipeline" in card and "train_distill.py" in card
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    ours = UnconditionalDiffusionPipeline.from_pretrained(out)
    assert isinstance(ours.scheduler, LCMScheduler) and ours.scheduler.config.prediction_type == "v_prediction"
    assert ours.scheduler.config.original_inference_steps == 10
    images = sample_steps(ours, batch_size=2)
    assert all(im.shape == (2, 8, 8, 1) and 0 <= im.min() and im.max() <= 1 for im in images.values())
    assert (images[1] - images[4]).std() > 0  # multistep consistency sampling re-noises and refines
    loaded = load_pipeline(out)
    torch.testing.assert_close(torch.from_numpy(sample_steps(loaded, batch_size=2)[2]), torch.from_numpy(images[2]))
    stock = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(stock).__name__ == "UnconditionalDiffusionPipeline"
    torch.testing.assert_close(torch.from_numpy(sample_steps(stock, batch_size=2)[4]), torch.from_numpy(images[4]))
    # the scheduler's own limit: no more steps than the grid the student was distilled on
    with pytest.raises(ValueError, match="num_inference_steps must be in \\[1, 10\\] for this distilled student"):
        ours(batch_size=1, num_inference_steps=11)
    # the student started from the teacher and moved (two updates, EMA weights saved)
    teacher_w = load_file(teacher / "unet" / "diffusion_pytorch_model.safetensors")
    student_w = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert teacher_w.keys() == student_w.keys()
    assert any(not torch.equal(teacher_w[k], student_w[k]) for k in teacher_w)


def test_class_student_is_guided_in_one_pass_and_reloads(tmp_path):
    teacher = save_teacher(tmp_path / "teacher", "class")
    out = tmp_path / "student"
    args = tiny_args(teacher, out, "--w_embedding_dim", "16", "--target_ema_decay", "0")  # the stop-grad target
    train_distill.main(train_distill.parse_args(args))
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["custom_pipelines.distill.guidance_embedding", "GuidanceEmbeddedUNet2DModel"]
    stock = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(stock).__name__ == "ClassConditionalDiffusionPipeline"
    assert stock.unet.config.time_cond_proj_dim == 16
    images = sample_steps(stock, class_labels=[0, 7], guidance_scale=2.0)
    assert images[2].shape == (2, 8, 8, 1)


def test_text_latent_student_embeds_w_and_reloads(tmp_path):
    teacher = save_teacher(tmp_path / "teacher", "text")
    out = tmp_path / "student"
    train_distill.main(train_distill.parse_args(tiny_args(teacher, out, "--w_embedding_dim", "16")))
    stock = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(stock).__name__ == "LatentDiffusionPipeline" and isinstance(stock.scheduler, LCMScheduler)
    assert stock.unet.config.time_cond_proj_dim == 16
    calls = []
    forward = stock.unet.forward
    stock.unet.forward = lambda sample, *a, **k: calls.append(sample.shape[0]) or forward(sample, *a, **k)
    images = sample_steps(stock, prompt=["a handwritten digit seven"], guidance_scale=3.0)
    assert images[4].shape == (1, 16, 16, 1)
    assert calls == [1] * 7  # 1 + 2 + 4 steps, one pass of one row each: no CFG doubling


def test_resume_from_latest_continues_exactly_with_an_ema_target(tmp_path):
    """Interrupted after step 2 and resumed → the same weights as a straight run; the EMA target f⁻ (extra state)
    is restored too (`--target_ema_decay 0.9`)."""
    from accelerate.state import AcceleratorState, GradientState

    teacher = save_teacher(tmp_path / "teacher")
    extra = ("--max_train_steps", "4", "--target_ema_decay", "0.9", "--mixed_precision", "no")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_distill.main(train_distill.parse_args(tiny_args(teacher, straight, *extra)))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_distill.main(train_distill.parse_args(tiny_args(teacher, resumed, *extra)))
    shutil.rmtree(resumed / "checkpoint-4")
    (resumed / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert (resumed / "checkpoint-2" / "extra_state.safetensors").is_file()  # θ⁻ is in the checkpoint
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train_distill.main(
        train_distill.parse_args(tiny_args(teacher, resumed, *extra, "--resume_from_checkpoint", "latest"))
    )
    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_at_three_points_resumes_bit_identical(tmp_path):
    from tests.training.kill_resume import check_kill_points

    teacher = save_teacher(tmp_path / "teacher")

    def args_for(out):
        return tiny_args(teacher, out, "--max_train_steps", "6", "--checkpointing_steps", "2")

    assert check_kill_points("train_distill.py", args_for, tmp_path, ["unet/diffusion_pytorch_model.safetensors"]) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--w_min", "4", "--w_max", "1"), "--w_min/--w_max must satisfy 0 <= w_min <= w_max"),
        (("--teacher_solver", "euler"), "--teacher_solver must be one of"),
        (("--loss_type", "l1"), "--loss_type must be one of"),
        (("--num_inference_steps", "11"), "--num_inference_steps must be in \\[1, --num_ddim_timesteps=10\\]"),
        (("--target_ema_decay", "1"), "--target_ema_decay must be in \\[0, 1\\)"),
        (("--w_embedding_dim", "15"), "--w_embedding_dim must be an even integer"),
        (("--teacher", ""), "--teacher is required"),
    ],
)
def test_bad_flags_raise_clear_errors(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_distill.parse_args(tiny_args(tmp_path / "teacher", tmp_path / "out", *extra))


def test_a_gan_or_missing_teacher_is_refused(tmp_path):
    from custom_pipelines.gan import DCGANGenerator
    from custom_pipelines.pipelines.pipeline_gan import GANPipeline

    gan_dir = tmp_path / "gan"
    generator = DCGANGenerator.from_config(load_component_config("dcgan-digits-16", "gan_generator"))
    GANPipeline(gan_generator=generator).save_pretrained(gan_dir)
    with pytest.raises(ValueError, match="is a GANPipeline: distillation needs a diffusion pipeline of ours"):
        train_distill.main(train_distill.parse_args(tiny_args(gan_dir, tmp_path / "out")))
    with pytest.raises(ValueError, match="not a saved pipeline"):
        train_distill.main(train_distill.parse_args(tiny_args(tmp_path / "nothing", tmp_path / "out2")))
