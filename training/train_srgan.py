"""Train SRResNet, then SRGAN from it (Ledig et al. 2017), on LR/HR crops of real photos, on the shared trainer core.

    accelerate launch training/train_srgan.py --stage srresnet --model_config srresnet-photos-x4 \\
        --output_dir runs/srresnet-x4 --max_train_steps 2000
    accelerate launch training/train_srgan.py --stage srgan --model_config srgan-photos-x4 \\
        --pretrained_model_name_or_path runs/srresnet-x4 --output_dir runs/srgan-x4 --max_train_steps 1000

Stage `srresnet` trains the generator alone with a pixel loss (`--pixel_loss l1|mse`). Stage `srgan` starts from a
trained SRResNet pipeline folder and adds the discriminator: the generator minimises content + 1e-3 × adversarial
(`--adversarial_weight`; `--adversarial_loss standard` is the paper's, `relativistic` ESRGAN's relativistic
average GAN). The content term is the VGG19 feature loss when `--vgg_weights` names VGG19 safetensors (a file,
folder or cached Hub repo; nothing is downloaded), else L1 + (1 − SSIM) on pixels.

Data: `--dataset_name photos` (default) crops the photos bundled with scikit-image / scikit-learn except the two
held out for evaluation; `--train_data_dir` crops a folder of your images instead. `--resolution` is the HR crop
side (the LR input is resolution / scale). Every validation writes LR-bicubic | SR | HR strips of the held-out
photos to samples/ and TensorBoard and logs PSNR / SSIM (Y channel, border = scale) against bicubic. The output is
a `SuperResolutionPipeline` folder (+ discriminator/ after the GAN stage). `--model_config` (a hub_configs/ variant,
folder or Hub repo id) gives the architecture and `training_recipe.json`; flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from custom_pipelines.cli import console_entry
from custom_pipelines.hub.configs import resolve_variant
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.recipe import RECIPE_FILE, apply_variant_recipe, parse_command_line

logger = logging.getLogger(__name__)
STAGES = ("srresnet", "srgan")
DEFAULT_MODEL_CONFIG = {"srresnet": "srresnet-photos-x4", "srgan": "srgan-photos-x4"}
COMPONENT = "upscaler"  # the generator's component name in SuperResolutionPipeline
GENERATOR_CLASS = "SRResNetGenerator"
RECIPE_KEYS = {
    "srresnet": ("stage", "pixel_loss", "learning_rate", "adam_beta1", "adam_beta2", "lr_scheduler"),
    "srgan": (
        "stage", "ssim_weight", "pixel_weight", "adversarial_loss", "adversarial_weight",
        "learning_rate", "d_learning_rate", "adam_beta1", "adam_beta2", "lr_scheduler",
    ),
}  # fmt: skip
EXAMPLE_SETUP = (
    "from PIL import Image\n"
    "from skimage.data import chelsea\n\n"
    "image = Image.fromarray(chelsea())  # any RGB image; the result is scale_factor times larger\n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=1e-4)  # Ledig et al. 2017: Adam, lr 1e-4
    parser.set_defaults(train_batch_size=16, resolution=96, lr_scheduler="constant", lr_warmup_steps=0)
    parser.set_defaults(max_grad_norm=0.0, ema_max_decay=0.999, num_validation_images=4, validation_steps=250)
    sr = parser.add_argument_group("super-resolution (the variant's training_recipe.json replaces these defaults)")
    sr.add_argument("--stage", default=None, choices=STAGES, help="default: the recipe's, else srresnet")
    sr.add_argument(
        "--model_config", default=None, help="hub_configs variant, folder or Hub id (default: srresnet-photos-x4 / "
        "srgan-photos-x4 by --stage)"
    )  # fmt: skip
    sr.add_argument("--num_train_patches", type=int, default=4096, help="random HR crops per epoch (fixed by seed)")
    sr.add_argument("--pixel_loss", default="l1", choices=("l1", "mse"), help="the srresnet stage's loss")
    sr.add_argument(
        "--content_loss", default=None, choices=("vgg", "l1_ssim"), help="srgan stage (default: vgg with "
        "--vgg_weights, else l1_ssim)"
    )  # fmt: skip
    sr.add_argument("--vgg_weights", default=None, help="VGG19 safetensors: file, folder or cached Hub repo id")
    sr.add_argument("--vgg_layer", default="conv5_4", help="VGG19 layer of the content loss (VGG54: conv5_4)")
    sr.add_argument("--vgg_before_activation", action="store_true", help="features before the ReLU (ESRGAN)")
    sr.add_argument("--ssim_weight", type=float, default=1.0, help="l1_ssim content: L1 + w·(1 − SSIM)")
    sr.add_argument("--pixel_weight", type=float, default=0.0, help="srgan stage: + w·L1 (ESRGAN uses 1e-2)")
    sr.add_argument("--adversarial_loss", default="standard", choices=("standard", "relativistic"))
    sr.add_argument("--adversarial_weight", type=float, default=1e-3, help="weight of the adversarial term")
    sr.add_argument("--d_learning_rate", type=float, default=None, help="default: --learning_rate")
    return parser


def is_sr_folder(folder: Path) -> bool:
    """Whether a pipeline folder / variant holds an SRResNet generator as its `upscaler`."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return False
    with open(index_path, encoding="utf-8") as f:
        return json.load(f).get(COMPONENT, [None, None])[1] == GENERATOR_CLASS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, given = parse_command_line(parser, argv)
    if args.model_config is None:
        args.model_config = DEFAULT_MODEL_CONFIG[args.stage or "srresnet"]
    if args.dataset_name is None and args.train_data_dir is None and args.train_shards is None:
        args.dataset_name = "photos"
    if not is_sr_folder(resolve_variant(args.model_config)):
        raise ValueError(f"--model_config {args.model_config!r} names no {GENERATOR_CLASS} {COMPONENT!r} component")
    # the variant's recipe first: a GAN stage started from an SRResNet run must not take that run's recipe
    sources = (args.model_config, args.pretrained_model_name_or_path)
    if apply_variant_recipe(args, parser, given, sources, accept=is_sr_folder) is None:
        logger.warning(f"no {RECIPE_FILE} for {args.model_config!r}: the flags' defaults apply")
    args.stage = args.stage or "srresnet"
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    args.d_learning_rate = args.learning_rate if args.d_learning_rate is None else args.d_learning_rate
    if args.num_train_patches < 1:
        raise ValueError(f"--num_train_patches must be a positive integer, got {args.num_train_patches}")
    for name in ("ssim_weight", "pixel_weight", "adversarial_weight"):
        if not 0 <= getattr(args, name) < float("inf"):  # NaN fails too
            raise ValueError(f"--{name} must be >= 0 and finite, got {getattr(args, name)}")
    if not 0 < args.d_learning_rate < float("inf"):
        raise ValueError(f"--d_learning_rate must be > 0 and finite, got {args.d_learning_rate}")
    if args.content_loss is None:
        args.content_loss = "vgg" if args.vgg_weights else "l1_ssim"
    if args.content_loss == "vgg" and not args.vgg_weights:
        raise ValueError("--content_loss vgg needs --vgg_weights (VGG19 safetensors; nothing is downloaded)")
    if args.content_loss == "vgg":
        from custom_pipelines.gan.srgan import VGG_LAYERS

        if args.vgg_layer not in VGG_LAYERS:
            raise ValueError(f"--vgg_layer must be one of {list(VGG_LAYERS)}, got {args.vgg_layer!r}")
    if args.content_loss == "l1_ssim" and args.vgg_weights:
        raise ValueError("--vgg_weights is used only with --content_loss vgg")
    if args.stage == "srgan":
        if not args.pretrained_model_name_or_path:
            raise ValueError(
                "--stage srgan starts from a trained SRResNet: give --pretrained_model_name_or_path (the output "
                "folder of a --stage srresnet run)"
            )
        if args.gradient_accumulation_steps != 1:
            raise ValueError(f"--gradient_accumulation_steps must be 1 for --stage srgan, got "
                             f"{args.gradient_accumulation_steps}")  # fmt: skip


def build_models(args):
    """The generator (from the pretrained pipeline or the variant's config) and, for the GAN stage, the
    discriminator (the pretrained folder's, else fresh from the variant's `discriminator/config.json`)."""
    import os

    from custom_pipelines.gan.srgan import SRGANDiscriminator, SRResNetGenerator
    from custom_pipelines.hub.configs import load_component_config

    pretrained = args.pretrained_model_name_or_path
    if pretrained:
        generator = SRResNetGenerator.from_pretrained(pretrained, subfolder=COMPONENT)
    else:
        generator = SRResNetGenerator.from_config(load_component_config(args.model_config, COMPONENT))
    scale = generator.config.scale_factor
    if args.resolution % scale:
        raise ValueError(f"--resolution (the HR crop side) must be a multiple of scale_factor {scale}, got "
                         f"{args.resolution}")  # fmt: skip
    if args.stage == "srresnet":
        return generator, None
    if pretrained and os.path.isfile(os.path.join(pretrained, "discriminator", "config.json")):
        discriminator = SRGANDiscriminator.from_pretrained(pretrained, subfolder="discriminator")
    else:
        discriminator = SRGANDiscriminator.from_config(load_component_config(args.model_config, "discriminator"))
    return generator, discriminator


def build_content_loss(args):
    """`ContentLoss` and the frozen network it needs (the VGG19 trunk, or none for the L1 + SSIM fallback)."""
    from custom_pipelines.gan.srgan import ContentLoss, VGGFeatures

    if args.content_loss == "vgg":
        vgg = VGGFeatures.from_safetensors(args.vgg_weights, args.vgg_layer, args.vgg_before_activation)
        return ContentLoss(vgg), {"content_network": vgg}
    return ContentLoss(None, args.ssim_weight), {}


def make_step(args, content_loss):
    """`training_step(trainer, batch)` of the stage: pixel loss, or one D then one G update."""
    import torch

    from custom_pipelines.gan.srgan import discriminator_loss, generator_adversarial_loss, pixel_loss

    def srresnet_step(trainer, batch: dict) -> dict:
        sr = trainer.models["generator"](batch["lr_pixel_values"])
        loss = pixel_loss(sr, batch["pixel_values"], args.pixel_loss)
        trainer.backward_and_step("generator", loss)
        return {"loss": loss.detach()}

    def srgan_step(trainer, batch: dict) -> dict:
        g_model, d_model = trainer.models["generator"], trainer.models["discriminator"]
        lr, hr = batch["lr_pixel_values"], batch["pixel_values"]
        sr = g_model(lr)
        # 1. discriminator on HR vs detached SR, one forward (BN sees both); the G step's gradients in D dropped
        trainer.optimizers["discriminator"].zero_grad(set_to_none=True)
        real, fake = d_model(torch.cat([hr, sr.detach()])).chunk(2)
        d_loss = discriminator_loss(real, fake, args.adversarial_loss)
        trainer.backward_and_step("discriminator", d_loss)
        # 2. generator: content + λ·adversarial (+ η·L1)
        real, fake = d_model(torch.cat([hr, sr])).chunk(2)
        adversarial = generator_adversarial_loss(real.detach(), fake, args.adversarial_loss)
        content = content_loss(sr, hr)
        g_loss = content + args.adversarial_weight * adversarial
        if args.pixel_weight:
            g_loss = g_loss + args.pixel_weight * pixel_loss(sr, hr, "l1")
        trainer.backward_and_step("generator", g_loss)
        return {
            "g_loss": g_loss.detach(),
            "content_loss": content.detach(),
            "adversarial_loss": adversarial.detach(),
            "d_loss": d_loss.detach(),
            "d_real_logit": real.detach().float().mean(),
            "d_fake_logit": fake.detach().float().mean(),
        }

    return srresnet_step if args.stage == "srresnet" else srgan_step


def validation_report(trainer, args, pipe):
    """PSNR / SSIM / sharpness of the held-out photos logged against bicubic; LR-bicubic | SR | HR strips returned."""
    from custom_pipelines.data.paired import comparison_strips, score_held_out
    from custom_pipelines.training.reporting import append_metrics

    scale, channels = pipe.scale_factor, pipe.upscaler.config.in_channels
    result = score_held_out(lambda lr: pipe(lr, output_type="pt").images, scale, channels)
    metrics = {f"eval/{key}": value for key, value in result["model"].items()}
    metrics |= {f"eval/bicubic_{key}": value for key, value in result["bicubic"].items()}
    trainer.accelerator.log(metrics, step=trainer.global_step)
    append_metrics(args.output_dir, trainer.global_step, metrics)
    logger.info(f"step {trainer.global_step}: held-out {metrics}")
    return comparison_strips(result["outputs"], num_strips=args.num_validation_images)


def used_recipe(args: argparse.Namespace) -> dict:
    """The objective and optimizer flags this run trained with, saved as the output's training_recipe.json."""
    return {name: getattr(args, name) for name in RECIPE_KEYS[args.stage]}


def main(args: argparse.Namespace) -> str:
    import os

    from custom_pipelines.data.paired import PairedPatchDataset, collate_pairs, random_pair, training_images
    from custom_pipelines.io import write_json
    from custom_pipelines.pipelines.pipeline_super_resolution import SuperResolutionPipeline
    from custom_pipelines.training import Trainer, adamw, create_accelerator
    from custom_pipelines.training.reporting import Code

    accelerator = create_accelerator(args)
    generator, discriminator = build_models(args)
    content_loss, frozen = build_content_loss(args) if args.stage == "srgan" else (None, {})
    scale, channels = generator.config.scale_factor, generator.config.in_channels
    stream_item = None
    if args.streaming:  # one random LR/HR pair cut from each streamed image, its randomness keyed by its place
        from custom_pipelines.training.streaming import decode_image

        dataset = None

        def stream_item(example: dict, generator):
            return random_pair(decode_image(example[args.image_column]), args.resolution, scale, channels, generator)
    else:
        images = training_images(args.dataset_name, args.train_data_dir, args.image_column, cache_dir=args.cache_dir)
        dataset = PairedPatchDataset(images, args.resolution, scale, args.num_train_patches, args.seed, channels)

    def pipeline(trainer) -> SuperResolutionPipeline:
        pipe = SuperResolutionPipeline(upscaler=trainer.unwrap("generator"))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_pipeline(trainer, output_dir: str) -> None:
        pipeline(trainer).save_pretrained(output_dir)
        if discriminator is not None:
            trainer.unwrap("discriminator").save_pretrained(os.path.join(output_dir, "discriminator"))
        write_json(os.path.join(output_dir, RECIPE_FILE), used_recipe(args))

    models, optimizers = {"generator": generator}, {"generator": adamw(generator.parameters(), args)}
    if discriminator is not None:
        models["discriminator"] = discriminator
        optimizers["discriminator"] = adamw(discriminator.parameters(), args, lr=args.d_learning_rate)
    objective = (
        f"pixel loss {args.pixel_loss}"
        if args.stage == "srresnet"
        else f"content {args.content_loss} + {args.adversarial_weight:g} × {args.adversarial_loss} adversarial"
    )
    trainer = Trainer(
        args,
        accelerator,
        models=models,
        optimizers=optimizers,
        training_step=make_step(args, content_loss),
        sample_images=lambda trainer: validation_report(trainer, args, pipeline(trainer)),
        save_pipeline=save_pipeline,
        ema_models=["generator"],
        frozen_models=frozen,
        image_channels=channels,
        resolution=args.resolution,
        dataset=dataset,
        collate_fn=collate_pairs,
        stream_item=stream_item,
        family=args.stage,
        pipeline_class="SuperResolutionPipeline",
        description=f"×{scale} super-resolution, {args.stage} stage ({GENERATOR_CLASS}, {objective}), trained on "
        f"LR/HR crops of {args.dataset_name or args.train_data_dir}.",
        script=__file__,
        example_call_kwargs={"image": Code("image")},
        example_setup=EXAMPLE_SETUP,
        uses_generator=False,
    )
    if content_loss is not None and "content_network" in trainer.frozen:
        content_loss.feature_network = trainer.frozen["content_network"]  # on the device, in the compute dtype
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
