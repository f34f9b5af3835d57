"""Train an unconditional pixel-space DDPM (Ho et al. 2020; Improved DDPM's hybrid loss optional).

    accelerate launch training/train_ddpm.py --dataset_name digits --output_dir runs/ddpm-digits --max_train_steps 3000

The model size comes from a `hub_configs/` variant (`--model_config`, default ddpm-digits-16), a local folder laid
out the same way, or a Hub repo id; `--pretrained_model_name_or_path` fine-tunes a saved pipeline instead.
"""

from __future__ import annotations

import argparse

from custom_pipelines.cli import console_entry
from custom_pipelines.lora.training import add_lora_args, apply_lora, validate_lora_args
from custom_pipelines.options import BETA_SCHEDULES, LOSS_TYPES
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.diffusion import add_diffusion_args, validate_diffusion_args

# Heavy modules (torch, diffusers, accelerate) are imported inside the functions that use them, so `--help` and
# flag errors answer at once.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=2e-4)
    ddpm = parser.add_argument_group("DDPM")
    ddpm.add_argument("--model_config", default="ddpm-digits-16", help="hub_configs variant, folder or Hub repo id")
    ddpm.add_argument("--beta_schedule", default=None, help=f"one of {BETA_SCHEDULES} (default: the config's)")
    ddpm.add_argument("--num_train_timesteps", type=int, default=None)
    ddpm.add_argument("--loss_type", default="simple", help="simple: L_simple; hybrid: L_simple + λ·L_vlb (learned Σ)")
    add_diffusion_args(ddpm)
    add_lora_args(parser)
    args = parser.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    validate_diffusion_args(args)
    validate_lora_args(args)
    if args.beta_schedule is not None and args.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"--beta_schedule must be one of {BETA_SCHEDULES}, got {args.beta_schedule!r}")
    if args.loss_type not in LOSS_TYPES:
        raise ValueError(f"--loss_type must be one of {LOSS_TYPES}, got {args.loss_type!r}")
    if args.num_train_timesteps is not None and args.num_train_timesteps < 2:
        raise ValueError(f"--num_train_timesteps must be >= 2, got {args.num_train_timesteps}")


def build_models(args):
    """UNet + scheduler from a saved pipeline (fine-tuning) or from a config variant (fresh weights)."""
    from diffusers import UNet2DModel

    from custom_pipelines.hub.configs import load_component_config
    from custom_pipelines.training.diffusion import load_training_scheduler

    if args.pretrained_model_name_or_path:
        unet = UNet2DModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
    else:
        unet_config = load_component_config(args.model_config, "unet")
        if args.loss_type == "hybrid":  # learned Σ: the UNet also outputs v (Nichol & Dhariwal eq. 15)
            unet_config["out_channels"] = 2 * unet_config["in_channels"]
        unet = UNet2DModel.from_config(unet_config)
    # diffusers knows the cosine schedule only by the name squaredcos_cap_v2
    beta_schedule = "squaredcos_cap_v2" if args.beta_schedule == "cosine" else args.beta_schedule
    scheduler = load_training_scheduler(
        args,
        prediction_type=args.prediction_type,
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=beta_schedule,
        variance_type="learned_range" if args.loss_type == "hybrid" else None,
    )
    if args.loss_type == "hybrid" and unet.config.out_channels != 2 * unet.config.in_channels:
        raise ValueError("--loss_type hybrid needs a UNet with 2× output channels (learned variance)")
    return unet, scheduler


def main(args: argparse.Namespace) -> str:
    import torch

    from custom_pipelines.pipelines.pipeline_unconditional_diffusion import UnconditionalDiffusionPipeline
    from custom_pipelines.training import create_accelerator
    from custom_pipelines.training.diffusion import (
        diffusion_loss,
        sample_validation_images,
        set_training_resolution,
        unet_trainer,
    )

    accelerator = create_accelerator(args)
    unet, scheduler = build_models(args)
    unet = apply_lora(unet, args)  # --lora_rank: the base frozen, an adapter to train
    resolution = set_training_resolution(unet, args.resolution)

    def training_step(trainer, batch: dict) -> dict:
        unet_in_training, clean = trainer.models["unet"], batch["pixel_values"]
        losses = diffusion_loss(unet_in_training, scheduler, clean, loss_type=args.loss_type, snr_gamma=args.snr_gamma)
        trainer.backward_and_step("unet", losses["loss"])
        return losses if args.loss_type == "hybrid" else {"loss": losses["loss"]}

    def pipeline(trainer) -> UnconditionalDiffusionPipeline:
        return UnconditionalDiffusionPipeline(unet=trainer.unwrap("unet"), scheduler=scheduler)

    def sample_images(trainer) -> torch.Tensor:
        return sample_validation_images(pipeline(trainer), trainer, batch_size=args.num_validation_images)

    trainer = unet_trainer(
        args,
        accelerator,
        unet,
        pipeline=pipeline,
        training_step=training_step,
        sample_images=sample_images,
        resolution=resolution,
        family="ddpm",
        pipeline_class="UnconditionalDiffusionPipeline",
        script=__file__,
        example_call_kwargs={"batch_size": 16, "num_inference_steps": 50},
        description=f"Unconditional DDPM ({scheduler.config.prediction_type}-prediction, "
        f"{scheduler.config.beta_schedule} schedule, loss {args.loss_type}"
        f"{f', Min-SNR-γ {args.snr_gamma:g}' if args.snr_gamma else ''}) "
        f"trained on {args.dataset_name or args.train_data_dir}.",
    )
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
