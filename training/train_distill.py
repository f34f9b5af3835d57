"""Distil a trained diffusion pipeline of ours into a 1–8-step student by consistency distillation (Song et al. 2023,
Algorithm 2; for class and text models with the guidance scale folded into the student, Luo et al. 2023, LCM).

    accelerate launch training/train_distill.py --teacher runs/ddpm-digits --dataset_name digits \\
        --output_dir runs/ddpm-digits-distilled --max_train_steps 600 --train_batch_size 32 --learning_rate 2e-4 \\
        --num_ddim_timesteps 20 --teacher_solver dpmsolver

The teacher is any saved `UnconditionalDiffusionPipeline`, `ClassConditionalDiffusionPipeline` or
`LatentDiffusionPipeline` (folder or Hub repo id), frozen. The student starts from its weights and learns
f(x_{t_{n+k}}, t_{n+k}) = f⁻(x̂_{t_n}, t_n), x̂_{t_n} one teacher ODE step (DDIM or DPM-Solver++(2S)) over the skipping
grid of `--num_ddim_timesteps` timesteps, f⁻ the EMA target (`--target_ema_decay`, LCM's 0.95) or the stop-gradient
student (0, iCT). Class and text teachers are distilled with classifier-free guidance at w ~ U[--w_min, --w_max]
folded in: the student reads w through an embedding, so a student step is ONE forward pass at any `guidance_scale`.

The output is the teacher's pipeline class with the student UNet and diffusers' `LCMScheduler`: load it with
`from_pretrained`, `load_pipeline` or `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` and sample with
`num_inference_steps` 1–8. The data are the teacher's training images (latent teachers: encoded by its VAE).
"""

from __future__ import annotations

import argparse
import math

from custom_pipelines.cli import console_entry
from custom_pipelines.training.args import add_common_args, validate_common_args

# Heavy modules (torch, diffusers, accelerate) are imported inside the functions that use them, so `--help` and
# flag errors answer at once.
TEACHER_SOLVERS = ("ddim", "dpmsolver")
LOSS_TYPES = ("l2", "huber")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=1e-4)
    cd = parser.add_argument_group("consistency distillation")
    cd.add_argument("--teacher", default=None, help="(required) a saved diffusion pipeline of ours (folder / repo id)")
    cd.add_argument("--num_ddim_timesteps", type=int, default=50, help="N, the skipping grid (t_n = (n+1)·T/N − 1)")
    cd.add_argument("--teacher_solver", default="ddim", help=f"one of {TEACHER_SOLVERS}")
    cd.add_argument("--loss_type", default="huber", help=f"one of {LOSS_TYPES} (huber: pseudo-Huber, iCT)")
    cd.add_argument("--huber_c", type=float, default=None, help="pseudo-Huber c (default 0.00054·√(C·H·W))")
    cd.add_argument(
        "--target_ema_decay", type=float, default=0.95, help="μ of the target f⁻ (LCM's 0.95; 0: stop-grad)"
    )
    cd.add_argument("--timestep_scaling", type=float, default=10.0, help="LCMScheduler's boundary-condition scaling")
    cd.add_argument("--w_min", type=float, default=1.0, help="guided teachers: lowest w distilled (diffusers' w)")
    cd.add_argument("--w_max", type=float, default=4.0, help="guided teachers: highest w distilled")
    cd.add_argument("--w_embedding_dim", type=int, default=256, help="sinusoidal features of w (even)")
    cd.add_argument("--num_inference_steps", type=int, default=4, help="student steps for validation grids")
    cd.add_argument("--validation_guidance_scale", type=float, default=2.0, help="w for validation grids")
    args = parser.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    if not args.teacher:
        raise ValueError("--teacher is required: a saved diffusion pipeline of ours (folder or Hub repo id) to distil")
    if args.pretrained_model_name_or_path:
        raise ValueError("--pretrained_model_name_or_path: the student starts from --teacher's weights; leave it out")
    if args.teacher_solver not in TEACHER_SOLVERS:
        raise ValueError(f"--teacher_solver must be one of {TEACHER_SOLVERS}, got {args.teacher_solver!r}")
    if args.loss_type not in LOSS_TYPES:
        raise ValueError(f"--loss_type must be one of {LOSS_TYPES}, got {args.loss_type!r}")
    if not 2 <= args.num_ddim_timesteps <= 1000:
        raise ValueError(f"--num_ddim_timesteps must be in [2, 1000], got {args.num_ddim_timesteps}")
    if not 1 <= args.num_inference_steps <= args.num_ddim_timesteps:
        raise ValueError(f"--num_inference_steps must be in [1, --num_ddim_timesteps={args.num_ddim_timesteps}], "
                         f"got {args.num_inference_steps}")  # fmt: skip
    if not 0.0 <= args.target_ema_decay < 1.0:
        raise ValueError(f"--target_ema_decay must be in [0, 1), got {args.target_ema_decay}")
    if args.huber_c is not None and not args.huber_c > 0:
        raise ValueError(f"--huber_c must be > 0, got {args.huber_c}")
    if not args.timestep_scaling > 0:
        raise ValueError(f"--timestep_scaling must be > 0, got {args.timestep_scaling}")
    if not (math.isfinite(args.w_min) and math.isfinite(args.w_max) and 0 <= args.w_min <= args.w_max):
        raise ValueError(
            f"--w_min/--w_max must satisfy 0 <= w_min <= w_max (finite), got [{args.w_min}, {args.w_max}]"
        )
    if args.w_embedding_dim < 2 or args.w_embedding_dim % 2:
        raise ValueError(f"--w_embedding_dim must be an even integer >= 2, got {args.w_embedding_dim}")
    if not (math.isfinite(args.validation_guidance_scale) and args.validation_guidance_scale >= 0):
        raise ValueError(f"--validation_guidance_scale must be >= 0 and finite, got {args.validation_guidance_scale}")


class TargetNetwork:
    """f⁻'s weights θ⁻ ← μ θ⁻ + (1 − μ) θ after every update (Song et al. 2023, Algorithm 2), kept in checkpoints
    (the trainer's `extra_state`), so a resumed run continues exactly."""

    def __init__(self, model, decay: float):
        import copy

        self.model, self.decay = copy.deepcopy(model).requires_grad_(False), decay

    def update(self, online) -> None:
        import torch

        with torch.no_grad():
            for target, source in zip(self.model.parameters(), online.parameters()):
                target.lerp_(source.detach().to(target.dtype), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"target": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict({k: v for k, v in state["target"].items()})


def load_class_dataset(args, resolution: int, teacher):
    """The training images with their labels, and (text teachers) the caption of every class, in id order."""
    import datasets

    from custom_pipelines.data.captions import label_captions
    from custom_pipelines.training.data import load_train_dataset

    dataset = load_train_dataset(args, resolution)
    feature = dataset.features.get(args.label_column) if args.label_column in dataset.column_names else None
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(
            f"a {teacher.family} teacher is distilled on labelled images: --label_column {args.label_column!r} "
            f"must be a ClassLabel column of the dataset {dataset.column_names}"
        )
    captions = label_captions(feature.names, args.dataset_name) if teacher.family == "latent-text" else None
    return dataset, captions


def main(args: argparse.Namespace) -> str:
    import copy

    import torch

    from custom_pipelines.distill.consistency import consistency_function, consistency_loss, skipping_grid
    from custom_pipelines.distill.guidance_embedding import guided_model_kwargs
    from custom_pipelines.distill.solvers import teacher_ode_step
    from custom_pipelines.distill.teacher import (
        build_student_pipeline,
        build_student_scheduler,
        build_student_unet,
        load_teacher,
    )
    from custom_pipelines.models.autoencoder import encode_latents
    from custom_pipelines.pipelines.guidance import combine_cfg
    from custom_pipelines.training import Trainer, adamw, create_accelerator
    from custom_pipelines.training.diffusion import sample_validation_images

    teacher = load_teacher(args.teacher)
    accelerator = create_accelerator(args)
    student = build_student_unet(teacher, args.w_embedding_dim)
    scheduler = build_student_scheduler(teacher, args.num_ddim_timesteps, args.timestep_scaling)
    if args.num_ddim_timesteps > scheduler.config.num_train_timesteps:
        raise ValueError(f"--num_ddim_timesteps {args.num_ddim_timesteps} exceeds the teacher's "
                         f"{scheduler.config.num_train_timesteps} training timesteps")  # fmt: skip
    pipe_cls = type(teacher.pipeline).__name__
    vae = getattr(teacher.pipeline, "vae", None)
    factor = teacher.pipeline.vae_scale_factor if teacher.latent else 1
    sample_size = teacher.unet.config.sample_size
    resolution = (sample_size if isinstance(sample_size, int) else sample_size[0]) * factor
    if args.resolution not in (None, resolution):
        raise ValueError(f"--resolution {args.resolution}: the teacher samples at {resolution}; leave it out")
    dataset, captions = (None, None)
    if teacher.guided:
        dataset, captions = load_class_dataset(args, resolution, teacher)
    caption_embeds = None
    if captions is not None:  # every class caption and "" encoded once by the teacher's frozen text encoder
        with torch.no_grad():
            cond, uncond = teacher.pipeline.encode_prompt(captions, device=accelerator.device)
        caption_embeds = {"cond": cond.float(), "uncond": uncond[:1].float()}
    grid, k = skipping_grid(scheduler.config.num_train_timesteps, args.num_ddim_timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)
    prediction_type, null_id = teacher.prediction_type, getattr(teacher.pipeline, "null_class_id", None)
    frozen = {"teacher": copy.deepcopy(teacher.unet)}
    if teacher.latent:
        frozen["vae"] = copy.deepcopy(vae)
    target = TargetNetwork(student, args.target_ema_decay) if args.target_ema_decay > 0 else None
    if target is not None:
        target.model.to(accelerator.device)

    def conditioning(labels, batch_size: int, device) -> tuple[dict, dict]:
        """(student kwargs, teacher kwargs for [cond; uncond]) of a batch; w ~ U[w_min, w_max] per sample."""
        if not teacher.guided:
            return {}, {}
        w = args.w_min + (args.w_max - args.w_min) * torch.rand(batch_size, device=device)
        student_kwargs = guided_model_kwargs(student, w, batch_size, device, torch.float32)
        if teacher.family == "latent-text":
            cond = caption_embeds["cond"].to(device)[labels]
            uncond = caption_embeds["uncond"].to(device).expand_as(cond)
            student_kwargs["encoder_hidden_states"] = cond
            return student_kwargs, {"encoder_hidden_states": torch.cat([cond, uncond]), "w": w}
        student_kwargs["class_labels"] = labels
        return student_kwargs, {"class_labels": torch.cat([labels, torch.full_like(labels, null_id)]), "w": w}

    def teacher_denoiser(net, teacher_kwargs: dict):
        """The frozen teacher as `fn(x, t) -> output`, classifier-free guided at each sample's w for guided ones."""
        kwargs = dict(teacher_kwargs)
        w = kwargs.pop("w", None)
        kwargs = {k: v.to(net.dtype) if v.is_floating_point() else v for k, v in kwargs.items()}  # e.g. bf16

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = x.to(net.dtype)
            if w is None:
                return net(x_in, t).sample.float()
            cond, uncond = net(torch.cat([x_in, x_in]), torch.cat([t, t]), **kwargs).sample.float().chunk(2)
            return combine_cfg(cond, uncond, w.view(-1, 1, 1, 1), x.shape[1])

        return denoise

    def training_step(trainer, batch: dict) -> dict:
        clean = batch["pixel_values"]
        if teacher.latent:  # z_0 ~ q(z | x), scaled as the pipeline's latents (global RNG: exact resume)
            with torch.no_grad():
                clean = encode_latents(trainer.frozen["vae"], clean.to(trainer.frozen["vae"].dtype)).float()
        batch_size, device = clean.shape[0], clean.device
        # 1. n ~ U{0..N−1}: t = t_{n+1} on the skipping grid, s = t − k (clamped at 0, where f(x, 0) = x)
        index = torch.randint(0, args.num_ddim_timesteps, (batch_size,), device=device)
        t = grid.to(device)[index]
        s = (t - k).clamp(min=0)
        noise = torch.randn_like(clean)
        alpha_t = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_t.sqrt() * clean + (1 - alpha_t).sqrt() * noise
        student_kwargs, teacher_kwargs = conditioning(batch.get("labels"), batch_size, device)
        online = trainer.models["unet"]
        with torch.no_grad():
            # 2. x̂_s: one teacher ODE step from x_t (guided at w), and the target f⁻(x̂_s, s) (stop-grad / EMA)
            denoise = teacher_denoiser(trainer.frozen["teacher"], teacher_kwargs)
            x_s = teacher_ode_step(args.teacher_solver, denoise, x_t, t, s, alphas_cumprod, prediction_type).float()
            target_net = target.model if target is not None else trainer.unwrap("unet")
            target_out = target_net(x_s, s, **student_kwargs).sample.float()
            f_target = consistency_function(target_out, x_s, s, alphas_cumprod, prediction_type, args.timestep_scaling)
        # 3. f_θ(x_t, t) → f⁻(x̂_s, s)
        f_online = consistency_function(online(x_t, t, **student_kwargs).sample.float(), x_t, t, alphas_cumprod,
                                        prediction_type, args.timestep_scaling)  # fmt: skip
        loss = consistency_loss(f_online, f_target, args.loss_type, args.huber_c)
        trainer.backward_and_step("unet", loss)
        if target is not None and trainer.accelerator.sync_gradients:
            target.update(trainer.unwrap("unet"))
        return {"loss": loss}

    def pipeline(trainer):
        return build_student_pipeline(teacher, trainer.unwrap("unet"), scheduler)

    def call_kwargs(num_images: int) -> dict:
        if teacher.family == "unconditional" or teacher.family == "latent-none":
            return {"batch_size": num_images}
        classes = (
            [i % teacher.pipeline.num_classes for i in range(num_images)] if teacher.family != "latent-text" else None
        )
        if teacher.family == "latent-text":
            return {"prompt": [captions[i % len(captions)] for i in range(num_images)],
                    "guidance_scale": args.validation_guidance_scale}  # fmt: skip
        return {"class_labels": classes, "guidance_scale": args.validation_guidance_scale}

    def sample_images(trainer) -> torch.Tensor:
        return sample_validation_images(pipeline(trainer), trainer, **call_kwargs(args.num_validation_images))

    example = {**call_kwargs(4 if teacher.family != "unconditional" else 16), "num_inference_steps": 4}
    if "batch_size" in example:
        example["batch_size"] = 16
    image_channels = vae.config.in_channels if teacher.latent else teacher.unet.config.in_channels
    trainer = Trainer(
        args,
        accelerator,
        models={"unet": student},
        optimizers={"unet": adamw(student.parameters(), args)},
        training_step=training_step,
        sample_images=sample_images,
        save_pipeline=lambda trainer, output_dir: pipeline(trainer).save_pretrained(output_dir),
        build_pipeline=pipeline,
        eval_pipeline_kwargs={
            "num_inference_steps": args.num_inference_steps,
            **{k: v for k, v in call_kwargs(1).items() if k != "batch_size"},
        },  # fmt: skip
        ema_models=["unet"],
        frozen_models=frozen,
        image_channels=image_channels,
        resolution=resolution,
        extra_state=target,
        dataset=dataset,
        family="distill",
        pipeline_class=pipe_cls,
        script=__file__,
        example_call_kwargs=example,
        description=f"{args.num_ddim_timesteps}-step-grid consistency distillation (teacher ODE: "
        f"{args.teacher_solver}, loss {args.loss_type}, target μ {args.target_ema_decay:g}"
        + (f", guidance w ∈ [{args.w_min:g}, {args.w_max:g}] embedded" if teacher.guided else "")
        + f") of the {pipe_cls} {args.teacher}; samples in 1–8 steps with LCMScheduler.",
    )
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
