"""Train diffusers' `AutoencoderKL` with the latent-diffusion objective, for latent diffusion on its latents.

    accelerate launch training/train_vae.py --model_config vae-digits-32-f4 --dataset_name digits \\
        --output_dir runs/vae-digits-32

`--model_config` (a `hub_configs/` variant, a folder laid out the same way, or a Hub repo id) gives the autoencoder
(`vae/config.json`), the PatchGAN (`discriminator/config.json`) and `training_recipe.json` (the variant's flags: a
flag given on the command line wins over the recipe). The loss (custom_pipelines.models.vae_losses) is CompVis'
LPIPSWithDiscriminator: L1 + `--ssim_weight`·(1 − SSIM) (+ LPIPS with `--lpips_backbone`) + `--kl_weight`·KL, and
from `--disc_start` on a hinge PatchGAN whose weight adapts to ‖∇L_rec‖/‖∇L_gan‖ on the decoder's last layer.

`--heldout_images` images are kept out of training: validation logs their PSNR/SSIM (`val/psnr`, `val/ssim`) and an
input | reconstruction grid. At the end the script measures `scaling_factor` = 1/std of the training set's latents
(and `shift_factor` when their mean is far from 0) and stores it in the VAE config. The output folder IS the
autoencoder (`AutoencoderKL.from_pretrained(output_dir)`; config.json + diffusion_pytorch_model.safetensors at its
top; `train_ldm.py --vae_path output_dir` takes it) with `discriminator/`, `training_recipe.json`,
`reconstruction_metrics.json`, `reconstructions.png` (held-out input | reconstruction) and the model card beside it.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from custom_pipelines.cli import console_entry
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.recipe import apply_variant_recipe, parse_command_line

# Heavy modules (torch, diffusers, accelerate) are imported inside the functions that use them, so `--help` and
# flag errors answer at once.
DEFAULT_LEARNING_RATE = 1e-4
RECIPE_KEYS = (
    "learning_rate", "d_learning_rate", "adam_beta1", "adam_beta2", "kl_weight", "ssim_weight", "disc_weight",
    "disc_start", "disc_factor", "perceptual_weight",
)  # fmt: skip
METRICS_JSON = "reconstruction_metrics.json"
RECONSTRUCTIONS_PNG = "reconstructions.png"
SPLIT_KEYS = (
    "dataset_name", "train_data_dir", "dataset_config_name", "image_column", "label_column", "class_filter",
    "max_train_samples", "center_crop", "seed",
)  # fmt: skip
VAE_CONFIG = "config.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=DEFAULT_LEARNING_RATE)
    # the latent-diffusion autoencoder's Adam betas (0.5, 0.9); no EMA unless asked for
    parser.set_defaults(adam_beta1=0.5, adam_beta2=0.9, use_ema=False)
    vae = parser.add_argument_group("autoencoder (the variant's training_recipe.json replaces these defaults)")
    vae.add_argument("--model_config", default="vae-digits-32-f4", help="hub_configs variant, folder or Hub repo id")
    vae.add_argument("--kl_weight", type=float, default=1e-6, help="weight of KL(q(z|x) ‖ N(0, I)) per pixel")
    vae.add_argument("--ssim_weight", type=float, default=0.1, help="weight of the structural term 1 − SSIM")
    vae.add_argument("--disc_weight", type=float, default=0.5, help="adversarial weight (× the adaptive λ); 0: off")
    vae.add_argument("--disc_start", type=int, default=0, help="step from which the discriminator trains and counts")
    vae.add_argument("--disc_factor", type=float, default=1.0, help="factor of both adversarial terms after the start")
    vae.add_argument("--d_learning_rate", type=float, default=None, help="discriminator lr (default: --learning_rate)")
    vae.add_argument(
        "--lpips_backbone",
        default=None,
        help="opt-in LPIPS: a LOCAL torchvision alexnet/vgg16 state dict (.safetensors/.pth); needs `pip install "
        "lpips`. Nothing is downloaded (lpips.LPIPS() alone would fetch the backbone from the internet)",
    )
    vae.add_argument("--lpips_net", default="alex", choices=("alex", "vgg"))
    vae.add_argument("--perceptual_weight", type=float, default=1.0, help="LPIPS weight (only with --lpips_backbone)")
    vae.add_argument("--heldout_images", type=int, default=64, help="images kept out of training for PSNR/SSIM")
    vae.add_argument(
        "--latent_scale_batches", type=int, default=None, help="batches the final scaling_factor is measured on"
    )
    vae.add_argument(
        "--store_shift_factor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store shift_factor when the latent mean is far from 0; --no-store_shift_factor for diffusers' SD "
        "pipelines, which apply scaling_factor only",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, given = parse_command_line(parser, argv)
    sources = (args.pretrained_model_name_or_path, args.model_config)
    apply_variant_recipe(args, parser, given, sources, accept=is_autoencoder_folder)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    args.d_learning_rate = args.learning_rate if args.d_learning_rate is None else args.d_learning_rate
    for name in ("kl_weight", "ssim_weight", "disc_weight", "disc_factor", "perceptual_weight", "disc_start"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not args.d_learning_rate > 0:
        raise ValueError(f"--d_learning_rate must be > 0, got {args.d_learning_rate}")
    if args.heldout_images < 1:
        raise ValueError(f"--heldout_images must be a positive integer, got {args.heldout_images}")
    if args.latent_scale_batches is not None and args.latent_scale_batches < 1:
        raise ValueError(f"--latent_scale_batches must be a positive integer, got {args.latent_scale_batches}")
    if args.lpips_backbone is not None and not os.path.isfile(args.lpips_backbone):
        raise ValueError(f"--lpips_backbone {args.lpips_backbone!r} is not a file (a local backbone state dict)")
    if args.eval_fid_every:
        raise ValueError("--eval_fid_every does not apply to an autoencoder (it reports PSNR/SSIM on held-out images)")
    if args.push_to_hub:
        raise ValueError(
            "--push_to_hub is not supported by train_vae yet (the Hub push expects a pipeline folder): upload the "
            "output folder with huggingface_hub's `HfApi().upload_folder`"
        )


# ----- where the autoencoder's config and weights are ---------------------------------------------------------------
def vae_subfolder(folder: Path) -> str | None:
    """None when `folder` is an autoencoder itself (a train_vae output, a VAE repo), "vae" for a variant or a
    pipeline with a `vae/` component; ValueError for anything else."""
    if (folder / VAE_CONFIG).is_file() and _class_name(folder / VAE_CONFIG) == "AutoencoderKL":
        return None
    if (folder / "vae" / VAE_CONFIG).is_file():
        return "vae"
    raise ValueError(f"{folder} holds no AutoencoderKL (neither config.json nor vae/config.json)")


def _class_name(path: Path) -> str | None:
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("_class_name")


def is_autoencoder_folder(folder: Path) -> bool:
    try:
        vae_subfolder(folder)
    except ValueError:
        return False
    return True


def autoencoder_folder(name_or_path: str) -> tuple[Path, str | None]:
    """(local folder, subfolder) of the autoencoder of a variant, folder or Hub repo id (configs only)."""
    from custom_pipelines.hub.configs import resolve_variant

    path = Path(name_or_path)
    if path.is_dir():
        return path, vae_subfolder(path)
    folder = resolve_variant(name_or_path, "vae")
    return folder, vae_subfolder(folder)


def build_models(args):
    """The autoencoder and the discriminator: from a saved run or a pipeline's `vae/` (fine-tuning), or fresh from
    the config variant. A pretrained folder without `discriminator/` gets a fresh one from --model_config."""
    from diffusers import AutoencoderKL

    from custom_pipelines.gan.patchgan import PatchGANDiscriminator
    from custom_pipelines.hub.configs import load_component_config

    if args.pretrained_model_name_or_path:
        folder, subfolder = autoencoder_folder(args.pretrained_model_name_or_path)
        vae = AutoencoderKL.from_pretrained(folder, subfolder=subfolder)
        if (folder / "discriminator" / VAE_CONFIG).is_file() and subfolder is None:
            return vae, PatchGANDiscriminator.from_pretrained(folder / "discriminator")
    else:
        vae = AutoencoderKL.from_config(load_component_config(args.model_config, "vae"))
    discriminator = PatchGANDiscriminator.from_config(load_component_config(args.model_config, "discriminator"))
    if discriminator.config.in_channels != vae.config.out_channels:
        raise ValueError(
            f"the discriminator takes {discriminator.config.in_channels} channels but the autoencoder outputs "
            f"{vae.config.out_channels}"
        )
    return vae, discriminator


def downsampling_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def training_resolution(vae, resolution: int | None) -> int:
    resolution = resolution or vae.config.sample_size
    factor = downsampling_factor(vae)
    if resolution % factor:
        raise ValueError(f"--resolution must be divisible by the autoencoder's factor {factor}, got {resolution}")
    return resolution


def split_heldout(dataset, n: int, seed: int):
    """(training part, `n` held-out images): a seeded split, so reruns hold out the same images."""
    if n >= len(dataset):
        raise ValueError(f"--heldout_images {n} leaves no training images of the {len(dataset)} in the dataset")
    parts = dataset.train_test_split(test_size=n, shuffle=True, seed=seed)
    return parts["train"], parts["test"]


def streamed_split(args, resolution: int, channels: int):
    """`--streaming` / `--train_shards`: (the stream to train on, the held-out images as a tensor). The stream's first
    `--heldout_images` examples (in stored order, before any shuffle) are held out and skipped by training, so reruns
    hold out the same images, as `split_heldout` does for a map-style dataset."""
    from custom_pipelines.training.streaming import decode_image, load_stream

    stream = load_stream(args)
    held = [decode_image(example[args.image_column]) for example in stream.take(args.heldout_images)]
    if len(held) < args.heldout_images:
        raise ValueError(f"--heldout_images {args.heldout_images}: the stream holds only {len(held)} examples")
    return stream.skip(args.heldout_images), image_tensors({args.image_column: held}, args, resolution, channels)


# batches of a stream the latent scale is measured on when --latent_scale_batches is not given
STREAMED_SCALE_BATCHES = 16


def first_streamed_images(stream, args, resolution: int, channels: int):
    """The first images of the training stream that the latent scale is measured on (it reads at most
    `--latent_scale_batches` batches, default 16 for a stream), as one tensor: a stream is never held whole."""
    from custom_pipelines.training.streaming import decode_image

    count = (args.latent_scale_batches or STREAMED_SCALE_BATCHES) * args.train_batch_size
    images = [decode_image(example[args.image_column]) for example in stream.take(count)]
    return image_tensors({args.image_column: images}, args, resolution, channels)


def image_tensors(dataset, args, resolution: int, channels: int):
    """The dataset's images as one [N, C, H, W] tensor in [-1, 1] (center crop, no flips: what is evaluated)."""
    import torch

    from custom_pipelines.data import ImageTransform

    transform = ImageTransform(resolution, channels, center_crop=args.center_crop)
    return torch.stack([transform(image) for image in dataset[args.image_column]])


# ----- evaluation, latent scale, card -------------------------------------------------------------------------------
def reconstruct(vae, images, batch_size: int):
    """Deterministic reconstructions (posterior mean) in [-1, 1] of images in [-1, 1], batch by batch."""
    import torch

    outputs = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            z = vae.encode(chunk.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
            outputs.append(vae.decode(z).sample.float().clamp(-1, 1).cpu())
    return torch.cat(outputs)


def reconstruction_metrics(vae, images, batch_size: int) -> tuple[dict, object]:
    """PSNR (dB) and SSIM of the reconstructions on [0, 1] images, averaged over the images; and the outputs."""
    from custom_pipelines.evaluation.image_quality import psnr, ssim
    from custom_pipelines.models.vae_losses import to_unit_range

    outputs = reconstruct(vae, images, batch_size)
    x, y = to_unit_range(images), to_unit_range(outputs)
    return {"psnr": float(psnr(y, x).mean()), "ssim": float(ssim(y, x).mean())}, outputs


def side_by_side(inputs, outputs):
    """[N, C, H, W] pairs → [N, C, H, 2W] tiles: input | reconstruction."""
    import torch

    from custom_pipelines.models.vae_losses import to_unit_range

    return torch.cat([to_unit_range(inputs), to_unit_range(outputs)], dim=-1)


def measure_training_latent_scale(vae, images, args) -> tuple[float, float | None]:
    """`scaling_factor`, `shift_factor` from posterior samples of the training images (Rombach et al. 2022 §4.3, as
    their `scale_by_std`), in the dataset's order, seeded by `--seed`."""
    import torch

    from custom_pipelines.models.autoencoder import measure_latent_scale

    generator = torch.Generator(vae.device).manual_seed(args.seed)
    return measure_latent_scale(
        vae, images.split(args.train_batch_size), max_batches=args.latent_scale_batches, generator=generator
    )


def card_image_code(args, resolution: int) -> str:
    """The snippet's input image: a built-in dataset's first image, else a file the reader names."""
    from custom_pipelines.data import BUILTIN_DATASETS

    if args.dataset_name in BUILTIN_DATASETS:
        return (
            f"from custom_pipelines.data import BUILTIN_DATASETS\n"
            f'image = BUILTIN_DATASETS[{args.dataset_name!r}]({resolution})[0]["image"]\n'
        )
    return 'from PIL import Image\nimage = Image.open("your_image.png")\n'


def make_card_info(base_cls):
    @dataclass(frozen=True)
    class AutoencoderCardInfo(base_cls):
        """The card of an autoencoder: no pipeline to call, so the snippet encodes and decodes one image."""

        image_code: str = ""
        vae_scale_factor: int = 8
        grayscale: bool = False
        resolution: int = 16

        def usage_snippet(self, repo_id: str) -> str:
            mode = "do_convert_grayscale=True" if self.grayscale else "do_convert_rgb=True"
            size = self.resolution
            return (
                "import torch\n"
                "from diffusers import AutoencoderKL\n"
                "from diffusers.image_processor import VaeImageProcessor\n\n"
                "from custom_pipelines.models.autoencoder import decode_latents, encode_latents\n\n"
                f"vae = AutoencoderKL.from_pretrained({repo_id!r})\n"
                f"processor = VaeImageProcessor(vae_scale_factor={self.vae_scale_factor}, {mode})\n"
                f"{self.image_code}"
                f"pixels = processor.preprocess(image, height={size}, width={size})  # [1, C, H, W] in [-1, 1]\n"
                "with torch.no_grad():\n"
                "    latents = encode_latents(vae, pixels, sample=False)  # scaling_factor applied: unit variance\n"
                "    reconstruction = decode_latents(vae, latents)\n"
                'processor.postprocess(reconstruction)[0].save("sample.png")\n'
            )

    return AutoencoderCardInfo


def used_recipe(args) -> dict:
    """The loss and optimizer flags this run trained with: the output's training_recipe.json (fine-tuning from the
    output reads it first)."""
    return {name: getattr(args, name) for name in RECIPE_KEYS}


# ----- training -----------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> str:
    import torch

    from custom_pipelines.hub.mixin import save_model_atomically
    from custom_pipelines.io import save_image, write_json
    from custom_pipelines.models.vae_losses import AutoencoderLoss, VAETrainingForward, load_lpips
    from custom_pipelines.training import ModelCardInfo, Trainer, adamw, create_accelerator
    from custom_pipelines.training.data import load_train_dataset
    from custom_pipelines.training.reporting import append_metrics, image_grid

    accelerator = create_accelerator(args)
    vae, discriminator = build_models(args)
    resolution = training_resolution(vae, args.resolution)
    channels = vae.config.in_channels
    if channels not in (1, 3):
        raise ValueError(f"the autoencoder must take 1 or 3 image channels, got {channels}")
    if args.streaming:  # the trainer core reads the stream; the held-out images are its first examples
        train_set, heldout = streamed_split(args, resolution, channels)
    else:
        train_set, heldout_set = split_heldout(load_train_dataset(args, resolution), args.heldout_images, args.seed)
        heldout = image_tensors(heldout_set, args, resolution, channels)
    frozen = {"lpips": load_lpips(args.lpips_backbone, args.lpips_net)} if args.lpips_backbone else {}
    objective_weights = {
        name: getattr(args, name)
        for name in ("kl_weight", "ssim_weight", "perceptual_weight", "disc_weight", "disc_start", "disc_factor")
    }

    def objective(trainer) -> AutoencoderLoss:
        return AutoencoderLoss(**objective_weights, perceptual=trainer.frozen.get("lpips"))

    def training_step(trainer, batch: dict) -> dict:
        images, step = batch["pixel_values"], trainer.global_step
        loss_fn = objective(trainer)
        vae_forward, d_model = trainer.models["vae"], trainer.models["discriminator"]
        # 1. autoencoder update: reconstruction + KL (+ the adaptively weighted adversarial term once D counts)
        reconstructions, mean, logvar = vae_forward(images)
        vae_loss, logs = loss_fn.autoencoder_loss(
            images, reconstructions, mean, logvar, step=step, discriminator=d_model,
            last_layer=trainer.unwrap("vae").last_layer,
        )  # fmt: skip
        trainer.backward_and_step("vae", vae_loss)
        # 2. discriminator update on the detached reconstructions (from --disc_start on; every rank alike)
        if loss_fn.adversarial(step) > 0:
            trainer.optimizers["discriminator"].zero_grad(set_to_none=True)  # drop what step 1 left in D
            d_loss, d_logs = loss_fn.discriminator_loss(d_model, images, reconstructions, step=step)
            trainer.backward_and_step("discriminator", d_loss)
            logs |= d_logs
        return logs

    def sample_images(trainer) -> torch.Tensor:
        """Held-out PSNR/SSIM to TensorBoard and metrics.jsonl; the input | reconstruction grid to the core."""
        model = trainer.unwrap("vae").vae
        metrics, outputs = reconstruction_metrics(model, heldout, args.train_batch_size)
        logs = {f"val/{k}": v for k, v in metrics.items()}
        trainer.accelerator.log(logs, step=trainer.global_step)
        append_metrics(args.output_dir, trainer.global_step, logs)
        n = min(args.num_validation_images, len(heldout))
        return side_by_side(heldout[:n], outputs[:n])

    def save_pipeline(trainer, output_dir: str) -> None:
        model = trainer.unwrap("vae").vae
        if args.streaming:
            train_images = first_streamed_images(train_set, args, resolution, channels)
        else:
            train_images = image_tensors(train_set, args, resolution, channels)
        scaling_factor, shift_factor = measure_training_latent_scale(model, train_images, args)
        shift_factor = shift_factor if args.store_shift_factor else None
        model.register_to_config(scaling_factor=scaling_factor, shift_factor=shift_factor)
        save_model_atomically(model, output_dir)  # the folder is the VAE: all of it or the old one, never a mix
        save_model_atomically(trainer.unwrap("discriminator"), os.path.join(output_dir, "discriminator"))
        write_json(os.path.join(output_dir, "training_recipe.json"), used_recipe(args))
        metrics, outputs = reconstruction_metrics(model, heldout, args.train_batch_size)
        n = min(args.num_validation_images, len(heldout))
        save_image(image_grid(side_by_side(heldout[:n], outputs[:n])), os.path.join(output_dir, RECONSTRUCTIONS_PNG))
        write_json(
            os.path.join(output_dir, METRICS_JSON),
            {
                "heldout_images": len(heldout),
                **{f"heldout_{k}": v for k, v in metrics.items()},
                "scaling_factor": scaling_factor,
                "shift_factor": shift_factor,
                "latent_shape": [model.config.latent_channels, *(2 * [resolution // downsampling_factor(model)])],
                "global_step": trainer.global_step,
                # what rebuilds the held-out split (benchmarks/vae_quality.py): split_heldout + image_tensors
                "heldout_split": {name: getattr(args, name) for name in SPLIT_KEYS} | {"resolution": resolution},
            },
        )

    vae_forward = VAETrainingForward(vae)
    trainer = Trainer(
        args,
        accelerator,
        models={"vae": vae_forward, "discriminator": discriminator},
        optimizers={
            "vae": adamw(vae_forward.parameters(), args),
            "discriminator": adamw(discriminator.parameters(), args, lr=args.d_learning_rate),
        },
        training_step=training_step,
        sample_images=sample_images,
        save_pipeline=save_pipeline,
        ema_models=["vae"],
        frozen_models=frozen,
        image_channels=channels,
        resolution=resolution,
        dataset=train_set,
        family="vae",
        pipeline_class="AutoencoderKL",
        script=__file__,
    )
    card_info = make_card_info(ModelCardInfo)
    trainer.card = card_info(
        family="vae",
        pipeline_class="AutoencoderKL",
        description=f"A KL autoencoder (diffusers' `AutoencoderKL`, f={downsampling_factor(vae)}, "
        f"{vae.config.latent_channels} latent channels) trained with the latent-diffusion objective on "
        f"{args.dataset_name or args.train_data_dir}; `scaling_factor` in its config gives its latents unit "
        f"variance. Held-out PSNR/SSIM: `{METRICS_JSON}`; the grids show input | reconstruction.",
        script=__file__,
        image_code=card_image_code(args, resolution),
        vae_scale_factor=downsampling_factor(vae),
        grayscale=channels == 1,
        resolution=resolution,
    )
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
