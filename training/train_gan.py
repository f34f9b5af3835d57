"""Train a StyleGAN, ProGAN or DCGAN generator with its discriminator on the shared trainer core.

    accelerate launch training/train_gan.py --model_config stylegan-digits-32 --dataset_name digits \\
        --output_dir runs/stylegan-digits --max_train_steps 3000

`--model_config` (a `hub_configs/` variant, a folder laid out the same way, or a Hub repo id) gives the generator
(the pipeline component) and the `discriminator/` config; its generator class picks the family. Each step is one
discriminator update; the generator is updated every `--n_critic` steps. StyleGAN adds mixing regularization and
tracks w_avg; ProGAN grows from 4×4, one fade-in and one stabilization phase of `--phase_steps` per resolution.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from custom_pipelines.cli import run_cli
from custom_pipelines.hub.configs import resolve_variant
from custom_pipelines.training.args import add_common_args, validate_common_args

# Heavy modules (torch, diffusers, accelerate) are imported inside the functions that use them, so `--help` and
# flag errors answer at once.
LOSSES = ("ns_r1", "wgan", "wgan_gp")


@dataclass(frozen=True)
class Family:
    """A GAN family by its public class names (resolved from `custom_pipelines` only when a model is built)."""

    name: str
    pipeline_name: str
    generator_name: str
    discriminator_name: str
    loss: str  # the papers' objective, learning rate and Adam betas
    learning_rate: float
    betas: tuple[float, float]

    @property
    def component(self) -> str:
        return "stylegan" if self.pipeline_name == "StyleGANPipeline" else "gan_generator"

    def _class(self, name: str) -> type:
        import custom_pipelines

        return getattr(custom_pipelines, name)

    @property
    def pipeline(self) -> type:
        return self._class(self.pipeline_name)

    @property
    def generator(self) -> type:
        return self._class(self.generator_name)

    @property
    def discriminator(self) -> type:
        return self._class(self.discriminator_name)


BETAS_099 = (0.0, 0.99)  # Karras et al.'s Adam betas (ProGAN, StyleGAN)
FAMILIES = {
    family.generator_name: family
    for family in (
        # name, pipeline, generator, discriminator, the paper's loss, learning rate, Adam betas
        Family("stylegan", "StyleGANPipeline", "StyleGANGenerator", "StyleGANDiscriminator", "ns_r1", 2e-3, BETAS_099),
        Family("progan", "GANPipeline", "ProGANGenerator", "ProGANDiscriminator", "wgan_gp", 1e-3, BETAS_099),
        Family("dcgan", "GANPipeline", "DCGANGenerator", "DCGANCritic", "wgan_gp", 1e-4, (0.0, 0.9)),
    )
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    # GAN defaults: the family's lr and betas (filled in below), no gradient clipping, no warm-up, faster EMA
    parser.set_defaults(learning_rate=None, adam_beta1=None, adam_beta2=None, max_grad_norm=0.0, lr_warmup_steps=0)
    parser.set_defaults(lr_scheduler="constant", ema_max_decay=0.999)
    gan = parser.add_argument_group("GAN")
    gan.add_argument("--model_config", default="stylegan-digits-32", help="hub_configs variant, folder or Hub repo id")
    gan.add_argument("--loss", default=None, help=f"one of {LOSSES} (default: the family's)")
    gan.add_argument("--n_critic", type=int, default=None, help="D steps per G step (default: 1 for ns_r1, else 5)")
    gan.add_argument("--r1_gamma", type=float, default=1.0, help="R1 weight γ (the penalty is γ/2·E‖∇D‖²)")
    gan.add_argument("--gp_lambda", type=float, default=10.0, help="WGAN-GP weight λ")
    gan.add_argument("--clip_value", type=float, default=0.01, help="WGAN weight clipping bound")
    gan.add_argument("--reg_interval", type=int, default=1, help="lazy R1/GP every k D steps, weight ×k (StyleGAN2)")
    gan.add_argument("--d_learning_rate", type=float, default=None, help="default: --learning_rate")
    gan.add_argument("--style_mixing_prob", type=float, default=0.9, help="StyleGAN mixing regularization")
    gan.add_argument("--w_avg_beta", type=float, default=0.995, help="StyleGAN: decay of the tracked mean w")
    gan.add_argument("--truncation_psi", type=float, default=1.0, help="StyleGAN: ψ of the validation samples")
    gan.add_argument("--phase_steps", type=int, default=500, help="ProGAN: steps per fade-in / stabilization phase")
    args = parser.parse_args(argv)
    args.family = read_family(args)
    fill_family_defaults(args)
    validate_args(args)
    return args


def read_family(args: argparse.Namespace) -> Family:
    """The family is named by the generator class in the pretrained pipeline's or the config's model_index.json."""
    folder = resolve_variant(args.pretrained_model_name_or_path or args.model_config)
    with open(folder / "model_index.json", encoding="utf-8") as f:
        index = json.load(f)
    for family in FAMILIES.values():
        if index.get(family.component, [None, None])[1] == family.generator_name:
            return family
    raise ValueError(f"--model_config {args.model_config!r} names no GAN generator ({', '.join(FAMILIES)})")


def fill_family_defaults(args: argparse.Namespace) -> None:
    family = args.family
    args.loss = args.loss or family.loss
    if args.learning_rate is None:  # WGAN with clipping: RMSProp at 5e-5 (Arjovsky et al. 2017, Algorithm 1)
        args.learning_rate = 5e-5 if args.loss == "wgan" else family.learning_rate
    args.adam_beta1 = family.betas[0] if args.adam_beta1 is None else args.adam_beta1
    args.adam_beta2 = family.betas[1] if args.adam_beta2 is None else args.adam_beta2
    args.d_learning_rate = args.d_learning_rate or args.learning_rate


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    if args.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {LOSSES}, got {args.loss!r}")
    for name in ("n_critic", "reg_interval", "phase_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.gradient_accumulation_steps != 1:
        raise ValueError(f"--gradient_accumulation_steps must be 1 for GANs, got {args.gradient_accumulation_steps}")
    if not 0.0 <= args.style_mixing_prob <= 1.0:
        raise ValueError(f"--style_mixing_prob must be in [0, 1], got {args.style_mixing_prob}")
    if not 0.0 <= args.w_avg_beta <= 1.0:
        raise ValueError(f"--w_avg_beta must be in [0, 1], got {args.w_avg_beta}")
    if not args.d_learning_rate > 0:
        raise ValueError(f"--d_learning_rate must be > 0, got {args.d_learning_rate}")


def build_models(args):
    """Generator and discriminator from a saved run (fine-tuning) or from the config variant (fresh weights)."""
    from custom_pipelines.hub.configs import load_component_config

    family = args.family
    if args.pretrained_model_name_or_path:
        path = args.pretrained_model_name_or_path
        generator = family.generator.from_pretrained(path, subfolder=family.component)
        discriminator = family.discriminator.from_pretrained(path, subfolder="discriminator")
    else:
        generator = family.generator.from_config(load_component_config(args.model_config, family.component))
        discriminator = family.discriminator.from_config(load_component_config(args.model_config, "discriminator"))
    group = getattr(discriminator.config, "mbstd_group_size", 1)
    if args.train_batch_size % min(group, args.train_batch_size):
        raise ValueError(f"--train_batch_size must be divisible by the minibatch-std group size {group}")
    return generator, discriminator


def progan_phase(step: int, phase_steps: int, max_stage: int) -> tuple[int, float]:
    """(stage, α): stage 0 stabilizes, then every stage fades in over one phase and stabilizes over the next."""
    phase, into = divmod(step, phase_steps)
    stage = min((phase + 1) // 2, max_stage)
    fading = phase % 2 == 1 and (phase + 1) // 2 <= max_stage
    return stage, (into / phase_steps if fading else 1.0)


def make_optimizer(model, args: argparse.Namespace, lr: float):
    import torch

    from custom_pipelines.training import adamw

    if args.loss == "wgan":  # Arjovsky et al. 2017: momentum-based optimizers destabilize weight-clipped WGAN
        return torch.optim.RMSprop(model.parameters(), lr=lr)
    elif args.loss in ("ns_r1", "wgan_gp"):
        return adamw(model.parameters(), args, lr=lr)
    else:
        raise ValueError(f"--loss must be one of {LOSSES}, got {args.loss!r}")


def main(args: argparse.Namespace) -> str:
    import torch
    import torch.nn.functional as F
    from accelerate.utils import DistributedDataParallelKwargs, DynamoBackend

    from custom_pipelines.gan.losses import gan_losses
    from custom_pipelines.gan.training_utils import GeneratorForward, progan_reals
    from custom_pipelines.training import Trainer, create_accelerator

    family = args.family
    accelerator = create_accelerator(args)
    penalty = {"ns_r1": args.r1_gamma, "wgan_gp": args.gp_lambda}.get(args.loss, 0.0)
    if accelerator.state.dynamo_plugin.backend != DynamoBackend.NO and penalty > 0:
        raise ValueError(
            f"--loss {args.loss} takes the gradient of a gradient (its penalty), which torch.compile cannot "
            "differentiate (aot_autograd has no double backward): launch with --dynamo_backend no, or use "
            "--loss wgan"
        )
    if family.name == "progan":  # the layers of the other resolutions get no gradient
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    generator, discriminator = build_models(args)
    resolution = args.resolution or generator.config.resolution
    if resolution != generator.config.resolution:
        raise ValueError(f"--resolution must be the model's {generator.config.resolution} for GANs, got {resolution}")
    losses = gan_losses(
        args.loss, args.r1_gamma * args.reg_interval, args.gp_lambda * args.reg_interval, args.clip_value
    )
    n_critic = args.n_critic or losses.discriminator_steps
    z_dim = generator.config.z_dim

    def set_growth(trainer) -> tuple[int, float]:
        stage, alpha = progan_phase(trainer.global_step, args.phase_steps, generator.max_stage)
        for model in (generator, discriminator):
            model.stage, model.fade_in_alpha = stage, alpha
        return stage, alpha

    def training_step(trainer, batch: dict) -> dict:
        reals, step = batch["pixel_values"], trainer.global_step
        if family.name == "progan":
            reals = progan_reals(reals, *set_growth(trainer))
        g_step, d_model = trainer.models["generator"], trainer.models["discriminator"]
        # 1. discriminator update on detached fakes (gradients the generator step left in D are dropped first)
        trainer.optimizers["discriminator"].zero_grad(set_to_none=True)
        with torch.no_grad():
            fakes, _ = g_step(torch.randn(reals.shape[0], z_dim, device=reals.device))
        d_loss, logs = losses.discriminator_loss(d_model, reals, fakes, regularize=step % args.reg_interval == 0)
        trainer.backward_and_step("discriminator", d_loss)
        losses.after_discriminator_step(trainer.unwrap("discriminator"))
        # 2. generator update every n_critic steps
        if (step + 1) % n_critic == 0:
            fakes, ws = g_step(torch.randn(reals.shape[0], z_dim, device=reals.device))
            g_loss = losses.generator_loss(d_model(fakes))
            trainer.backward_and_step("generator", g_loss)
            if ws is not None:
                generator.update_w_avg(ws, args.w_avg_beta)
            logs["g_loss"] = g_loss.detach()
        return logs

    def pipeline(trainer):
        return family.pipeline(**{family.component: trainer.unwrap("generator").model})

    def sample_images(trainer) -> torch.Tensor:
        kwargs = {"truncation_psi": args.truncation_psi} if family.name == "stylegan" else {}
        generator_rng = torch.Generator(trainer.device).manual_seed(args.seed)
        images = pipeline(trainer)(
            batch_size=args.num_validation_images, generator=generator_rng, output_type="pt", **kwargs
        ).images
        return F.interpolate(images, size=resolution, mode="nearest")  # ProGAN samples at its current resolution

    def save_pipeline(trainer, output_dir: str) -> None:
        if family.name == "progan":  # saved models sample at their final resolution
            for model in (generator, discriminator):
                model.stage, model.fade_in_alpha = model.max_stage, 1.0
        pipeline(trainer).save_pretrained(output_dir)
        trainer.unwrap("discriminator").save_pretrained(f"{output_dir}/discriminator")

    g_step = GeneratorForward(generator, args.style_mixing_prob)
    trainer = Trainer(
        args,
        accelerator,
        models={"generator": g_step, "discriminator": discriminator},
        optimizers={
            "generator": make_optimizer(g_step, args, args.learning_rate),
            "discriminator": make_optimizer(discriminator, args, args.d_learning_rate),
        },
        training_step=training_step,
        sample_images=sample_images,
        save_pipeline=save_pipeline,
        ema_models=["generator"],
        image_channels=generator.config.img_channels,
        resolution=resolution,
        family=family.name,
        pipeline_class=family.pipeline_name,
        description=f"{family.name} ({family.generator_name}, loss {args.loss}) trained on "
        f"{args.dataset_name or args.train_data_dir}.",
    )
    if family.name == "progan" and trainer.max_train_steps <= args.phase_steps * 2 * generator.max_stage:
        needed = args.phase_steps * 2 * generator.max_stage + 1
        raise ValueError(
            f"ProGAN reaches {resolution}² after {needed - 1} steps: give --max_train_steps >= {needed} "
            f"or fewer --phase_steps, got {trainer.max_train_steps} steps"
        )
    trainer.train()
    return args.output_dir


def cli() -> None:
    """Console entry point: a user error prints one line and exits 1."""
    run_cli(lambda: main(parse_args()))


if __name__ == "__main__":
    cli()
