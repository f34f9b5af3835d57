"""Train a StyleGAN, ProGAN or DCGAN generator with its discriminator on the shared trainer core.

    accelerate launch training/train_gan.py --model_config stylegan-digits-32 --dataset_name digits \\
        --output_dir runs/stylegan-digits --max_train_steps 3000

`--model_config` (a `hub_configs/` variant, a folder laid out the same way, or a Hub repo id) gives the generator
(the pipeline component), the `discriminator/` config and `training_recipe.json`: the variant's objective and
optimizer flags (`--loss`, `--learning_rate`, `--adam_beta1`, ...). A flag given on the command line wins over the
recipe; without a recipe the flags' generic defaults apply. The generator class picks the family. Each step is one
discriminator update; the generator is updated every `--n_critic` steps. A StyleGAN generator adds mixing
regularization and tracks w_avg; a growing generator (ProGAN) starts at 4×4, with one fade-in and one stabilization
phase of `--phase_steps` per resolution.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from custom_pipelines.cli import console_entry
from custom_pipelines.hub.configs import resolve_variant
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.recipe import RECIPE_FILE, apply_variant_recipe, parse_command_line, read_recipe

# Heavy modules (torch, diffusers, accelerate) are imported inside the functions that use them, so `--help` and
# flag errors answer at once.
logger = logging.getLogger(__name__)
RECIPE_KEYS = ("loss", "learning_rate", "d_learning_rate", "adam_beta1", "adam_beta2", "n_critic", "reg_interval")
EXAMPLE_TRUNCATION_PSI = 0.7  # what the model card's usage snippet shows for a StyleGAN


@dataclass(frozen=True)
class Family:
    """A GAN family by its public class names (resolved from `custom_pipelines` only when a model is built)."""

    name: str
    pipeline_name: str
    generator_name: str
    discriminator_name: str
    component: str  # the generator's component name in the pipeline

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


FAMILIES = {
    family.generator_name: family
    for family in (
        Family("stylegan", "StyleGANPipeline", "StyleGANGenerator", "StyleGANDiscriminator", "stylegan"),
        Family("progan", "GANPipeline", "ProGANGenerator", "ProGANDiscriminator", "gan_generator"),
        Family("dcgan", "GANPipeline", "DCGANGenerator", "DCGANCritic", "gan_generator"),
    )
}


def build_parser() -> argparse.ArgumentParser:
    # default learning rate and Adam betas without a recipe: Radford et al. 2016's (DCGAN)
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=2e-4)
    # GAN defaults: no gradient clipping, no warm-up, faster EMA
    parser.set_defaults(adam_beta1=0.5, adam_beta2=0.999, max_grad_norm=0.0, lr_warmup_steps=0)
    parser.set_defaults(lr_scheduler="constant", ema_max_decay=0.999)
    gan = parser.add_argument_group("GAN (the variant's training_recipe.json replaces these defaults)")
    gan.add_argument("--model_config", default="stylegan-digits-32", help="hub_configs variant, folder or Hub repo id")
    gan.add_argument("--loss", default="ns_r1", help="ns_r1, wgan or wgan_gp (custom_pipelines.gan.losses)")
    gan.add_argument("--n_critic", type=int, default=None, help="D steps per G step (default: the objective's)")
    gan.add_argument("--r1_gamma", type=float, default=1.0, help="R1 weight γ (the penalty is γ/2·E‖∇D‖²)")
    gan.add_argument("--gp_lambda", type=float, default=10.0, help="WGAN-GP weight λ")
    gan.add_argument("--clip_value", type=float, default=0.01, help="WGAN weight clipping bound")
    gan.add_argument("--reg_interval", type=int, default=1, help="lazy R1/GP every k D steps, weight ×k (StyleGAN2)")
    gan.add_argument("--d_learning_rate", type=float, default=None, help="default: --learning_rate")
    gan.add_argument("--style_mixing_prob", type=float, default=0.9, help="StyleGAN mixing regularization")
    gan.add_argument("--w_avg_beta", type=float, default=0.995, help="StyleGAN: decay of the tracked mean w")
    gan.add_argument("--truncation_psi", type=float, default=1.0, help="StyleGAN: ψ of the validation samples")
    gan.add_argument("--phase_steps", type=int, default=500, help="ProGAN: steps per fade-in / stabilization phase")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, given = parse_command_line(parser, argv)
    args.family = read_family(args.pretrained_model_name_or_path or args.model_config)
    apply_recipe(args, parser, given)
    fill_objective_defaults(args)
    validate_args(args)
    return args


def family_of(folder: Path) -> Family | None:
    """The family whose generator class the folder's model_index.json names; None for any other pipeline."""
    with open(folder / "model_index.json", encoding="utf-8") as f:
        index = json.load(f)
    for family in FAMILIES.values():
        if index.get(family.component, [None, None])[1] == family.generator_name:
            return family
    return None


def read_family(name_or_path: str) -> Family:
    """The family of a pipeline folder, variant or Hub repo id; ValueError for one that names no GAN generator."""
    family = family_of(resolve_variant(name_or_path))
    if family is None:
        raise ValueError(f"model config {name_or_path!r} names no GAN generator ({', '.join(FAMILIES)})")
    return family


def apply_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser, given: set) -> None:
    """Set every recipe flag the command line did not give, from the pretrained pipeline folder's recipe, else the
    --model_config variant's, if it is the same family. A recipe is tuned for its loss: a different `--loss` on the
    command line leaves it out (with a warning), like a missing recipe (generic defaults)."""

    def accept(folder: Path) -> bool:
        if family_of(folder) != args.family:
            return False
        tuned_for = read_recipe(folder / RECIPE_FILE, parser).get("loss", args.loss)
        if "loss" in given and tuned_for != args.loss:
            path = folder / RECIPE_FILE
            logger.warning(f"--loss {args.loss} is not the loss {path} is tuned for ({tuned_for}): recipe not used")
            return False
        return True

    sources = (args.pretrained_model_name_or_path, args.model_config)
    if apply_variant_recipe(args, parser, given, sources, accept) is None:
        source = args.pretrained_model_name_or_path or args.model_config
        folders = [resolve_variant(s) for s in sources if s]
        if not any((folder / RECIPE_FILE).is_file() for folder in folders):
            logger.warning(f"{source!r} has no {RECIPE_FILE}: generic GAN defaults for the flags not given")


def fill_objective_defaults(args: argparse.Namespace) -> None:
    """What neither the command line nor the recipe set: `--n_critic` (and WGAN's step size) from the objective."""
    from custom_pipelines.gan.losses import GAN_OBJECTIVES

    if args.loss not in GAN_OBJECTIVES:
        raise ValueError(f"--loss must be one of {sorted(GAN_OBJECTIVES)}, got {args.loss!r}")
    objective = GAN_OBJECTIVES[args.loss]
    args.n_critic = objective.n_critic if args.n_critic is None else args.n_critic
    if args.learning_rate is None:
        args.learning_rate = objective.default_learning_rate  # None: the generic default (validate_common_args)


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)  # fills the generic --learning_rate where nothing set it
    args.d_learning_rate = args.learning_rate if args.d_learning_rate is None else args.d_learning_rate
    for name in ("n_critic", "reg_interval", "phase_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.gradient_accumulation_steps != 1:
        raise ValueError(f"--gradient_accumulation_steps must be 1 for GANs, got {args.gradient_accumulation_steps}")
    if not 0.0 <= args.style_mixing_prob <= 1.0:
        raise ValueError(f"--style_mixing_prob must be in [0, 1], got {args.style_mixing_prob}")
    if not 0.0 <= args.w_avg_beta <= 1.0:
        raise ValueError(f"--w_avg_beta must be in [0, 1], got {args.w_avg_beta}")
    if not 0 < args.d_learning_rate < float("inf"):
        raise ValueError(f"--d_learning_rate must be > 0 and finite, got {args.d_learning_rate}")
    for name in ("r1_gamma", "gp_lambda"):
        if not 0 <= getattr(args, name) < float("inf"):  # NaN fails too
            raise ValueError(f"--{name} must be >= 0 and finite, got {getattr(args, name)}")
    if not 0 < args.clip_value < float("inf"):
        raise ValueError(
            f"--clip_value must be > 0 and finite (WGAN clips weights to ±clip_value), got {args.clip_value}"
        )
    from custom_pipelines.pipelines.pipeline_stylegan import PSI_RANGE  # the pipeline's own range for ψ

    if not PSI_RANGE[0] <= args.truncation_psi <= PSI_RANGE[1]:
        raise ValueError(f"--truncation_psi must be in [{PSI_RANGE[0]}, {PSI_RANGE[1]}], got {args.truncation_psi}")


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


def make_optimizer(model, objective, args: argparse.Namespace, lr: float):
    import torch

    from custom_pipelines.training import adamw

    if objective.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=lr)
    elif objective.optimizer == "adam":
        return adamw(model.parameters(), args, lr=lr)
    else:
        raise ValueError(f"objective optimizer must be 'adam' or 'rmsprop', got {objective.optimizer!r}")


def used_recipe(args: argparse.Namespace, objective) -> dict:
    """The objective and optimizer flags this run trained with, saved as the output's training_recipe.json."""
    from dataclasses import fields

    return {name: getattr(args, name) for name in (*RECIPE_KEYS, *(field.name for field in fields(objective)))}


def main(args: argparse.Namespace) -> str:
    import inspect
    import os

    import torch
    import torch.nn.functional as F
    from accelerate.utils import DistributedDataParallelKwargs, DynamoBackend

    from custom_pipelines.gan.losses import gan_objective
    from custom_pipelines.gan.training_utils import GeneratorForward, progan_reals
    from custom_pipelines.io import write_json
    from custom_pipelines.training import Trainer, create_accelerator
    from custom_pipelines.training.fsdp import gathered_through_backward

    family = args.family
    accelerator = create_accelerator(args)
    reg_interval = args.reg_interval  # lazy regularization: the penalty weight ×k every k steps (StyleGAN2)
    objective = gan_objective(args.loss, args.r1_gamma * reg_interval, args.gp_lambda * reg_interval, args.clip_value)
    if accelerator.state.dynamo_plugin.backend != DynamoBackend.NO and objective.needs_double_backward:
        raise ValueError(
            f"--loss {args.loss} takes the gradient of a gradient (its penalty), which torch.compile cannot "
            "differentiate (aot_autograd has no double backward): launch with --dynamo_backend no, or use "
            "--loss wgan"
        )
    generator, discriminator = build_models(args)
    grows = hasattr(generator, "max_stage")  # ProGAN: trains from 4×4 up to its final resolution
    tracks_w_avg = hasattr(generator, "update_w_avg")  # StyleGAN: the mean w that truncation pulls towards
    if grows:  # the layers of the other resolutions get no gradient
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    resolution = args.resolution or generator.config.resolution
    if resolution != generator.config.resolution:
        raise ValueError(f"--resolution must be the model's {generator.config.resolution} for GANs, got {resolution}")
    z_dim = generator.config.z_dim
    takes_truncation = "truncation_psi" in inspect.signature(family.pipeline.__call__).parameters
    example_call_kwargs = {"batch_size": 16} | ({"truncation_psi": EXAMPLE_TRUNCATION_PSI} if takes_truncation else {})

    def set_growth(trainer) -> tuple[int, float]:
        stage, alpha = progan_phase(trainer.global_step, args.phase_steps, generator.max_stage)
        for model in (generator, discriminator):
            model.stage, model.fade_in_alpha = stage, alpha
        return stage, alpha

    def training_step(trainer, batch: dict) -> dict:
        reals, step = batch["pixel_values"], trainer.global_step
        if grows:
            reals = progan_reals(reals, *set_growth(trainer))
        g_forward, d_model = trainer.models["generator"], trainer.models["discriminator"]
        # 1. discriminator update on detached fakes (gradients the generator step left in D are dropped first)
        trainer.optimizers["discriminator"].zero_grad(set_to_none=True)
        with torch.no_grad():
            fakes, _ = g_forward(torch.randn(reals.shape[0], z_dim, device=reals.device))
        regularize = step % reg_interval == 0
        with gathered_through_backward(accelerator, d_model, regularize and objective.needs_double_backward):
            d_loss, logs = objective.discriminator_loss(d_model, reals, fakes, regularize=regularize)
            trainer.backward_and_step("discriminator", d_loss)
        objective.after_discriminator_step(trainer.unwrap("discriminator"))
        # 2. generator update every n_critic steps
        if (step + 1) % args.n_critic == 0:
            fakes, ws = g_forward(torch.randn(reals.shape[0], z_dim, device=reals.device))
            g_loss = objective.generator_loss(d_model(fakes))
            trainer.backward_and_step("generator", g_loss)
            if tracks_w_avg:
                generator.update_w_avg(ws, args.w_avg_beta)
            logs["g_loss"] = g_loss.detach()
        return logs

    def pipeline(trainer):
        return family.pipeline(**{family.component: trainer.unwrap("generator").model})

    def sample_images(trainer) -> torch.Tensor:
        kwargs = {"truncation_psi": args.truncation_psi} if takes_truncation else {}
        generator_rng = torch.Generator(trainer.device).manual_seed(args.seed)
        images = pipeline(trainer)(
            batch_size=args.num_validation_images, generator=generator_rng, output_type="pt", **kwargs
        ).images
        return F.interpolate(images, size=resolution, mode="nearest")  # ProGAN samples at its current resolution

    def save_pipeline(trainer, output_dir: str) -> None:
        if grows:  # saved models sample at their final resolution
            for model in (generator, discriminator):
                model.stage, model.fade_in_alpha = model.max_stage, 1.0
        pipeline(trainer).save_pretrained(output_dir)
        trainer.unwrap("discriminator").save_pretrained(f"{output_dir}/discriminator")
        write_json(os.path.join(output_dir, RECIPE_FILE), used_recipe(args, objective))

    g_forward = GeneratorForward(generator, args.style_mixing_prob)
    trainer = Trainer(
        args,
        accelerator,
        models={"generator": g_forward, "discriminator": discriminator},
        optimizers={
            "generator": make_optimizer(g_forward, objective, args, args.learning_rate),
            "discriminator": make_optimizer(discriminator, objective, args, args.d_learning_rate),
        },
        optimizer_step_every={"generator": args.n_critic},
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
        script=__file__,
        example_call_kwargs=example_call_kwargs,
    )
    if grows and trainer.max_train_steps <= args.phase_steps * 2 * generator.max_stage:
        needed = args.phase_steps * 2 * generator.max_stage + 1
        raise ValueError(
            f"ProGAN reaches {resolution}² after {needed - 1} steps: give --max_train_steps >= {needed} "
            f"or fewer --phase_steps, got {trainer.max_train_steps} steps"
        )
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
