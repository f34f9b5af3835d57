"""Train a CycleGAN (two ResNet generators, two PatchGAN discriminators) on two unpaired image domains.

    accelerate launch training/train_cyclegan.py --model_config cyclegan-digits-thick-16 \\
        --dataset_name digits-thick --output_dir runs/cyclegan-digits --max_train_steps 1500

`--model_config` (a `hub_configs/` variant, a folder laid out the same way, or a Hub repo id) gives the generators
`generator_a_to_b/`, `generator_b_to_a/`, the discriminators `discriminator_a/`, `discriminator_b/` and
`training_recipe.json` (learning rate, Adam betas, schedule, loss weights, resolution, batch size); a flag given on
the command line wins over the recipe. Data: a built-in stand-in pair (`digits-thick`, `photos-posterized`), a
folder with `trainA/` and `trainB/` (junyanz layout, `testA/`, `testB/` held out), one dataset with
`--domain_column`, or two datasets (`--dataset_name_b`). Each step updates both generators (one optimizer), then
both discriminators (the other) on fakes from the image pools. Validation grids show, from held-out images,
A | A→B | A→B→A | B | B→A | B→A→B per row, and log the held-out cycle error (`eval/cycle_l1_a`, `eval/cycle_l1_b`).
"""

from __future__ import annotations

import argparse
import os

from custom_pipelines.cli import console_entry
from custom_pipelines.training.args import add_common_args, validate_common_args
from custom_pipelines.training.recipe import RECIPE_FILE, apply_variant_recipe, parse_command_line

# Heavy modules (torch, diffusers, accelerate) are imported inside the functions that use them, so `--help` and
# flag errors answer at once.
COMPONENTS = ("generator_a_to_b", "generator_b_to_a", "discriminator_a", "discriminator_b")
RECIPE_KEYS = (
    "learning_rate", "adam_beta1", "adam_beta2", "lr_scheduler", "lambda_cycle", "lambda_identity", "pool_size",
    "pool_return_probability", "resolution", "train_batch_size", "use_ema", "ema_max_decay",
)  # fmt: skip
EVAL_BATCH = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, default_learning_rate=2e-4)
    # junyanz defaults: Adam(2e-4, β1 0.5), batch 1, constant lr then linear decay to 0 over the second half
    parser.set_defaults(adam_beta1=0.5, adam_beta2=0.999, max_grad_norm=0.0, lr_warmup_steps=0, train_batch_size=1)
    parser.set_defaults(lr_scheduler="constant_then_linear", ema_max_decay=0.999, num_validation_images=8)
    group = parser.add_argument_group("CycleGAN (the variant's training_recipe.json replaces these defaults)")
    group.add_argument(
        "--model_config", default="cyclegan-digits-thick-16", help="hub_configs variant, folder or repo"
    )
    group.add_argument("--lambda_cycle", type=float, default=10.0, help="cycle-consistency weight λ_cyc")
    group.add_argument(
        "--lambda_identity", type=float, default=0.5, help="identity weight relative to λ_cyc (λ_id = this·λ_cyc)"
    )
    group.add_argument("--pool_size", type=int, default=50, help="past fakes per image pool (0: no pool)")
    group.add_argument("--pool_return_probability", type=float, default=0.5, help="chance a full pool swaps")
    group.add_argument("--dataset_name_b", default=None, help="domain B's dataset when --dataset_name is domain A")
    group.add_argument("--train_shards_b", default=None, help="domain B's shards when --train_shards is domain A")
    group.add_argument("--domain_column", default=None, help="one dataset: the column that names each image's domain")
    group.add_argument("--domain_a", default=None, help="the --domain_column value (or class name) of domain A")
    group.add_argument("--domain_b", default=None, help="the --domain_column value (or class name) of domain B")
    group.add_argument("--holdout_fraction", type=float, default=0.1, help="held out per domain without a test split")
    group.add_argument(
        "--num_eval_images", type=int, default=128, help="held-out images per domain for the cycle error"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, given = parse_command_line(parser, argv)
    apply_variant_recipe(
        args, parser, given, [args.pretrained_model_name_or_path, args.model_config], accept=is_cyclegan
    )
    validate_args(args)
    return args


def is_cyclegan(folder) -> bool:
    """Whether a variant or pipeline folder is a CycleGAN one (its model_index.json names both generators)."""
    import json

    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    return all(index.get(name, [None, None])[1] == "CycleGANGenerator" for name in COMPONENTS[:2])


def validate_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    if args.resolution is None:
        raise ValueError("--resolution is needed (the variant's training_recipe.json gives none)")
    if args.gradient_accumulation_steps != 1:
        raise ValueError(
            f"--gradient_accumulation_steps must be 1 for CycleGAN, got {args.gradient_accumulation_steps}"
        )
    for name in ("lambda_cycle", "lambda_identity"):
        if not 0 <= getattr(args, name) < float("inf"):  # NaN fails too
            raise ValueError(f"--{name} must be >= 0 and finite, got {getattr(args, name)}")
    validate_domain_args(args)
    if args.train_shards_b is not None and args.train_shards is None:
        raise ValueError("--train_shards_b is domain B's half of a streamed pair: give --train_shards (domain A) too")
    if args.pool_size < 0:
        raise ValueError(f"--pool_size must be >= 0 (0: no pool), got {args.pool_size}")
    if not 0.0 <= args.pool_return_probability <= 1.0:
        raise ValueError(f"--pool_return_probability must be in [0, 1], got {args.pool_return_probability}")
    if not 0.0 < args.holdout_fraction < 1.0:
        raise ValueError(f"--holdout_fraction must be in (0, 1), got {args.holdout_fraction}")
    if args.num_eval_images < 1:
        raise ValueError(f"--num_eval_images must be a positive integer, got {args.num_eval_images}")


def validate_domain_args(args: argparse.Namespace) -> None:
    """The two ways to name domain B of a non-built-in dataset exclude each other (the loader would pick one)."""
    domains = [name for name in ("domain_a", "domain_b") if getattr(args, name) is not None]
    if domains and args.domain_column is None:
        raise ValueError(f"--{' and --'.join(domains)} name values of --domain_column: give --domain_column too")
    if args.domain_column is not None and len(domains) != 2:
        raise ValueError("--domain_column needs both --domain_a and --domain_b (the column's value of each domain)")
    if args.domain_column is not None and args.dataset_name_b is not None:
        raise ValueError("pass --dataset_name_b (domain B's own dataset) or --domain_column (one dataset), not both")
    if args.train_data_dir is not None and (args.domain_column is not None or args.dataset_name_b is not None):
        raise ValueError(
            "--train_data_dir holds both domains (trainA/, trainB/): drop --domain_column and --dataset_name_b"
        )


def build_models(args) -> dict:
    """The four networks from a saved run (fine-tuning) or from the config variant (fresh weights)."""
    from custom_pipelines.gan.cyclegan import CycleGANGenerator
    from custom_pipelines.gan.patchgan import PatchGANDiscriminator
    from custom_pipelines.hub.configs import load_component_config

    classes = dict(
        zip(COMPONENTS, (CycleGANGenerator, CycleGANGenerator, PatchGANDiscriminator, PatchGANDiscriminator))
    )
    if args.pretrained_model_name_or_path:
        return {n: c.from_pretrained(args.pretrained_model_name_or_path, subfolder=n) for n, c in classes.items()}
    return {n: c.from_config(load_component_config(args.model_config, n)) for n, c in classes.items()}


def check_channels(models: dict) -> int:
    """A ↔ B with one channel count: A→B maps in → out, B→A out → in, each D sees its domain's channels."""
    g_ab, g_ba = models["generator_a_to_b"].config, models["generator_b_to_a"].config
    channels_a, channels_b = g_ab.in_channels, g_ab.out_channels
    found = (g_ba.in_channels, g_ba.out_channels, models["discriminator_a"].config.in_channels,
             models["discriminator_b"].config.in_channels)  # fmt: skip
    if found != (channels_b, channels_a, channels_a, channels_b) or channels_a != channels_b:
        raise ValueError(
            "the model config's channels disagree: generator_a_to_b must map C → C, generator_b_to_a C → C and both "
            f"discriminators take C channels (C = 1 or 3), got A→B {channels_a}→{channels_b}, B→A "
            f"{g_ba.in_channels}→{g_ba.out_channels}, D_A {found[2]}, D_B {found[3]}"
        )
    if channels_a not in (1, 3):
        raise ValueError(f"training images must have 1 or 3 channels, the model config has {channels_a}")
    return channels_a


class PoolsState:
    """The image pools of every rank in the checkpoint: `state_dict` gathers them (every rank calls it during
    accelerate's save_state), `load_state_dict` gives each rank its own pool back."""

    def __init__(self, pools: dict, accelerator):
        self.pools, self.accelerator = pools, accelerator

    def state_dict(self) -> dict:
        import torch

        state = {}
        for name, pool in self.pools.items():
            if pool.images is None:  # pool_size 0, or not queried yet: the same on every rank
                state[name] = None
                continue
            images = self.accelerator.gather(pool.images.contiguous()[None]).cpu()
            counts = self.accelerator.gather(torch.tensor([pool.count], device=pool.images.device)).cpu()
            state[name] = {"images": images, "counts": counts.tolist()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, pool in self.pools.items():
            saved = state.get(name)
            if saved is None:
                pool.images, pool.count = None, 0
                continue
            rank = self.accelerator.process_index % len(saved["counts"])  # another world size: reuse ranks' pools
            pool.load_state_dict({"images": saved["images"][rank].to(self.accelerator.device),
                                  "count": saved["counts"][rank]})  # fmt: skip


def translation_rows(generators, real_a, real_b):
    """Held-out images → rows A | A→B | A→B→A | B | B→A | B→A→B as one [6·n, C, H, W] batch in [-1, 1]."""
    import torch

    out = generators(real_a, real_b, identity=False)
    columns = [
        out["real_a"],
        out["fake_b"],
        out["reconstructed_a"],
        out["real_b"],
        out["fake_a"],
        out["reconstructed_b"],
    ]
    return torch.stack(columns, dim=1).flatten(0, 1)


def held_out_cycle_error(generators, domain, direction: str, count: int, device) -> float:
    """Mean |x − F(G(x))| (in [0, 1] units) over the first `count` held-out images of one domain."""
    import torch

    g, f = (generators.generator_a_to_b, generators.generator_b_to_a)[:: 1 if direction == "a" else -1]
    total, n = 0.0, 0
    for start in range(0, min(count, len(domain)), EVAL_BATCH):
        x = torch.stack([domain[i] for i in range(start, min(start + EVAL_BATCH, count, len(domain)))]).to(device)
        total += float((f(g(x)) - x).abs().mean(dim=(1, 2, 3)).sum()) / 2  # [-1, 1] → [0, 1] units
        n += x.shape[0]
    return total / n


def example_setup(args) -> str:
    """The model card's code before the call: a held-out domain-A image of a built-in pair, else the user's own."""
    from custom_pipelines.data.unpaired import UNPAIRED_BUILTINS

    if args.dataset_name in UNPAIRED_BUILTINS:
        return (
            "from custom_pipelines.data.unpaired import load_unpaired_domains\n\n"
            f'image = load_unpaired_domains({args.dataset_name!r}, resolution={args.resolution}).test_a[0]["image"]'
        )
    return 'from PIL import Image\n\nimage = Image.open("a_domain_a_image.png")'


def used_recipe(args: argparse.Namespace) -> dict:
    """The flags this run trained with, saved as the output's training_recipe.json (the output is a variant)."""
    return {name: getattr(args, name) for name in RECIPE_KEYS}


def streamed_domains(args, channels: int):
    """(the rank's `ZippedStreams` of A and B items, held-out A, held-out B) for `--streaming` / `--train_shards`: the
    first `--num_eval_images` of each domain's stream (stored order) are held out and skipped by training."""
    import torch
    from accelerate import PartialState

    from custom_pipelines.data import ImageTransform
    from custom_pipelines.data.unpaired import ImageDomain, image_dataset
    from custom_pipelines.training.data import resolve_num_workers
    from custom_pipelines.training.streaming import ZippedStreams, decode_image, domain_streams

    column, n = args.image_column, args.num_eval_images
    streams, held_out = [], []
    for offset, stream in enumerate(domain_streams(args)):
        images = [decode_image(example[column]) for example in stream.take(n)]
        if len(images) < n:
            raise ValueError(f"--num_eval_images {n}: domain {'AB'[offset]}'s stream holds only {len(images)} images")
        eval_transform = ImageTransform(args.resolution, channels, center_crop=True)
        held_out.append(ImageDomain(image_dataset(images), eval_transform))
        streams.append(stream.skip(n))
    train = ImageTransform(args.resolution, channels, center_crop=False, random_flip=args.random_flip)

    def to_item(example: dict, generator: torch.Generator) -> dict:
        return {side: train(decode_image(example[side][column]), generator) for side in ("a", "b")}

    state = PartialState()
    items = ZippedStreams(
        *streams, to_item, seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size, rank=state.process_index,
        world_size=state.num_processes, batch_size=args.train_batch_size,
        num_workers=resolve_num_workers(args.dataloader_num_workers),
    )  # fmt: skip
    return items, held_out[0], held_out[1]


def collate_domains(items) -> dict:
    """A batch of (A, B) image pairs, from the map-style `UnpairedDataset` (tuples) or a stream (dicts)."""
    import torch

    pairs = [(item["a"], item["b"]) if isinstance(item, dict) else item for item in items]
    return {
        "pixel_values_a": torch.stack([a for a, _ in pairs]),
        "pixel_values_b": torch.stack([b for _, b in pairs]),
    }


def main(args: argparse.Namespace) -> str:
    import numpy as np
    import torch

    from custom_pipelines.data.unpaired import load_unpaired_domains, unpaired_training_data
    from custom_pipelines.gan.cyclegan import CycleGANDiscriminators, CycleGANGenerators, CycleGANObjective, ImagePool
    from custom_pipelines.io import write_json
    from custom_pipelines.pipelines.pipeline_cyclegan import CycleGANPipeline
    from custom_pipelines.training import Trainer, adamw, create_accelerator, image_grid
    from custom_pipelines.training.checkpoint import resolve_checkpoint
    from custom_pipelines.training.fsdp import is_sharded
    from custom_pipelines.training.reporting import Code, append_metrics

    accelerator = create_accelerator(args)  # seeds the RNG first: the initial weights follow --seed
    if is_sharded(accelerator):
        # its generator step calls each discriminator directly (not through the pair's forward, so that DDP syncs
        # them only in their own step); under FSDP2 that first call makes the inner model a root of its own
        raise ValueError(
            "--use_fsdp: train_cyclegan.py calls its discriminators outside their wrapper's forward, which FSDP2 "
            "cannot shard; launch it with DDP (--multi_gpu), which it is tested with"
        )
    models = build_models(args)
    channels = check_channels(models)
    identity = args.lambda_identity > 0
    if args.streaming:  # two streams read side by side; the first --num_eval_images of each are held out
        dataset, test_a, test_b = streamed_domains(args, channels)
        domains = argparse.Namespace(name_a="A", name_b="B")
    else:
        domains = load_unpaired_domains(
            args.dataset_name, args.train_data_dir, resolution=args.resolution, dataset_name_b=args.dataset_name_b,
            domain_column=args.domain_column, domain_a=args.domain_a, domain_b=args.domain_b,
            image_column=args.image_column, holdout_fraction=args.holdout_fraction, seed=args.seed,
        )  # fmt: skip
        if args.max_train_samples is not None:
            domains.train_a = domains.train_a.select(range(min(args.max_train_samples, len(domains.train_a))))
        dataset, test_a, test_b = unpaired_training_data(
            domains, args.resolution, channels, random_flip=args.random_flip, seed=args.seed
        )
    objective = CycleGANObjective(args.lambda_cycle, args.lambda_identity)
    # global RNG (generator=None): accelerate checkpoints it on every rank, PoolsState the pools' contents
    pools = {domain: ImagePool(args.pool_size, args.pool_return_probability) for domain in ("a", "b")}
    generators = CycleGANGenerators(models["generator_a_to_b"], models["generator_b_to_a"])
    discriminators = CycleGANDiscriminators(models["discriminator_a"], models["discriminator_b"])

    def training_step(trainer, batch: dict) -> dict:
        real_a, real_b = batch["pixel_values_a"], batch["pixel_values_b"]
        d_pair = trainer.unwrap("discriminators")
        # 1. both generators: adversarial + cycle + identity, through frozen discriminators (junyanz's order).
        # The discriminators run unwrapped here, so DDP sees their parameters only in their own step.
        with trainer.accelerator.autocast():
            out = trainer.models["generators"](real_a, real_b, identity=identity)
            d_pair.requires_grad_(False)
            logits_a, logits_b = d_pair.discriminator_a(out["fake_a"]), d_pair.discriminator_b(out["fake_b"])
            g_loss, logs = objective.generator_loss(out, logits_a, logits_b)
        trainer.backward_and_step("generators", g_loss)
        d_pair.requires_grad_(True)
        # 2. both discriminators on real images and pooled past fakes
        fake_a, fake_b = pools["a"].query(out["fake_a"].detach()), pools["b"].query(out["fake_b"].detach())
        d_loss, d_logs = trainer.models["discriminators"](real_a, fake_a, real_b, fake_b)
        trainer.backward_and_step("discriminators", d_loss)
        return {**logs, **d_logs, "d_loss": d_loss.detach()}

    def sample_images(trainer) -> torch.Tensor:
        g_pair, device = trainer.unwrap("generators"), trainer.device
        k = args.num_validation_images
        rows = translation_rows(g_pair, test_a.first(k).to(device), test_b.first(k).to(device))
        metrics = {f"eval/cycle_l1_{d}": held_out_cycle_error(g_pair, domain, d, args.num_eval_images, device)
                   for d, domain in (("a", test_a), ("b", test_b))}  # fmt: skip
        trainer.accelerator.log(metrics, step=trainer.global_step)
        append_metrics(args.output_dir, trainer.global_step, metrics)
        # one composed picture (six columns), which the trainer frames and saves like any grid
        grid = image_grid((rows.float().cpu() + 1) / 2, nrow=6)
        pixels = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)
        return pixels.reshape(grid.height, grid.width, channels).permute(2, 0, 1)[None]

    def save_pipeline(trainer, output_dir: str) -> None:
        g_pair, d_pair = trainer.unwrap("generators"), trainer.unwrap("discriminators")
        CycleGANPipeline(g_pair.generator_a_to_b, g_pair.generator_b_to_a).save_pretrained(output_dir)
        d_pair.discriminator_a.save_pretrained(os.path.join(output_dir, "discriminator_a"))
        d_pair.discriminator_b.save_pretrained(os.path.join(output_dir, "discriminator_b"))
        write_json(os.path.join(output_dir, RECIPE_FILE), used_recipe(args))

    trainer = Trainer(
        args,
        accelerator,
        models={"generators": generators, "discriminators": discriminators},
        optimizers={
            "generators": adamw(generators.parameters(), args),
            "discriminators": adamw(discriminators.parameters(), args),
        },
        training_step=training_step,
        sample_images=sample_images,
        save_pipeline=save_pipeline,
        ema_models=["generators"],
        image_channels=channels,
        resolution=args.resolution,
        family="cyclegan",
        pipeline_class="CycleGANPipeline",
        description=f"CycleGAN ({domains.name_a} ↔ {domains.name_b}) trained on "
        f'{args.dataset_name or args.train_data_dir}: `direction="a_to_b"` translates {domains.name_a} to '
        f'{domains.name_b}, `"b_to_a"` back.',
        script=__file__,
        example_call_kwargs={"image": Code("image"), "direction": "a_to_b"},
        example_setup=example_setup(args),
        uses_generator=False,
        dataset=dataset,
        collate_fn=collate_domains,
        extra_state=PoolsState(pools, accelerator),  # the pools' images as safetensors in each checkpoint
    )
    if resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) is None:
        trainer.validate("step_000000.png")  # the "before" grid and the untrained cycle error
    trainer.train()
    return args.output_dir


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
