"""What every diffusion family trains with: its flags, its scheduler, one noise-and-timestep loss, validation grids.

`train_ddpm.py` and `train_cfg.py` (and the latent families after them) differ only in the model and its inputs.
"""

from __future__ import annotations

import argparse

from custom_pipelines.options import PREDICTION_TYPES


def add_diffusion_args(group: argparse._ArgumentGroup) -> None:
    """`--prediction_type`, `--snr_gamma` and `--num_inference_steps` (validation sampling)."""
    group.add_argument("--prediction_type", default=None, help=f"one of {PREDICTION_TYPES} (default: the config's)")
    group.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR-γ loss weighting (Hang et al. 2023; 5 in the paper); default: off (uniform L_simple)",
    )
    group.add_argument("--num_inference_steps", type=int, default=50, help="steps for validation sampling")


def validate_diffusion_args(args: argparse.Namespace) -> None:
    if args.prediction_type is not None and args.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"--prediction_type must be one of {PREDICTION_TYPES}, got {args.prediction_type!r}")
    if args.snr_gamma is not None and not args.snr_gamma > 0:
        raise ValueError(f"--snr_gamma must be > 0 (or left out), got {args.snr_gamma}")
    if args.num_inference_steps < 1:
        raise ValueError(f"--num_inference_steps must be a positive integer, got {args.num_inference_steps}")


def load_training_scheduler(args: argparse.Namespace, **overrides):
    """Our DDPM scheduler from the pretrained pipeline (fine-tuning) or the `--model_config` variant; overrides
    that are None keep the config's value."""
    from custom_pipelines.hub.configs import load_component_config
    from custom_pipelines.schedulers.scheduling_ddpm_ancestral import DDPMAncestralScheduler

    if args.pretrained_model_name_or_path:
        config = DDPMAncestralScheduler.load_config(args.pretrained_model_name_or_path, subfolder="scheduler")
    else:
        config = load_component_config(args.model_config, "scheduler", "scheduler_config.json")
    return DDPMAncestralScheduler.from_config(config, **{k: v for k, v in overrides.items() if v is not None})


def set_training_resolution(unet, resolution: int | None) -> int:
    """`--resolution` (default: the UNet's `sample_size`), checked against its downsampling and saved in its config."""
    from .args import check_resolution

    resolution = resolution or unet.config.sample_size
    check_resolution(unet, resolution)
    unet.register_to_config(sample_size=resolution)
    return resolution


def diffusion_loss(model, scheduler, clean, *, loss_type: str = "simple", snr_gamma: float | None = None, **inputs):
    """One training draw (Ho et al. 2020, Algorithm 1): t ~ U{0..T−1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,
    then the scheduler's loss on `model(x_t, t, **inputs)`. Returns the scheduler's dict of losses (`loss` first).

    The draws use the global torch RNG: accelerate's `set_seed` seeds it and every checkpoint saves and restores it.
    """
    import torch

    noise = torch.randn(clean.shape, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    model_output = model(scheduler.add_noise(clean, noise, timesteps), timesteps, **inputs).sample
    return scheduler.training_losses(
        model_output.float(), clean, noise, timesteps, loss_type=loss_type, snr_gamma=snr_gamma
    )


def sample_validation_images(pipe, trainer, **call_kwargs):
    """A seeded validation batch in [0, 1] from `pipe` at `--num_inference_steps`, progress bar off."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    return pipe(
        num_inference_steps=trainer.args.num_inference_steps,
        generator=torch.Generator(trainer.device).manual_seed(trainer.args.seed),
        output_type="pt",
        **call_kwargs,
    ).images


def unet_trainer(args, accelerator, unet, *, pipeline, eval_pipeline_kwargs: dict | None = None, **trainer_kwargs):
    """The `Trainer` of a one-UNet diffusion family: fused AdamW and EMA on `unet`, `pipeline(trainer)` saved at the
    end and sampled for `--eval_fid_every`. `trainer_kwargs`: the step, the validation grid and the card."""
    from .trainer import Trainer, adamw

    return Trainer(
        args,
        accelerator,
        models={"unet": unet},
        optimizers={"unet": adamw(unet.parameters(), args)},
        save_pipeline=lambda trainer, output_dir: pipeline(trainer).save_pretrained(output_dir),
        build_pipeline=pipeline,
        eval_pipeline_kwargs={"num_inference_steps": args.num_inference_steps, **(eval_pipeline_kwargs or {})},
        ema_models=["unet"],
        image_channels=unet.config.in_channels,
        **trainer_kwargs,
    )
