"""Load a saved pipeline (folder or Hub repo id) with `from_pretrained` and write a grid of samples.

python -m training.sample --pipeline runs/ddpm-digits --num_images 64 --output runs/ddpm-digits/samples.png

Every pipeline type we save works (`custom_pipelines.call_inputs` decides what each is given; `evaluate` shares it):
- unconditional diffusion, GANs, StyleGAN: `--num_images` samples, in a near-square grid;
- class-conditional (pixel or latent): `--class_labels` ('all' by default, or ids such as '3,5'). When
  `--num_images` is a multiple of the labels, each label gets one grid row of the same number of images; otherwise
  the labels are cycled (8 images on 10 classes: classes 0..7) and a note says so. Without `--num_images`: 64
  rounded down to a multiple of the labels (60 for 10 classes);
- text-conditional latent diffusion: `--prompt` (required), one row per prompt on the same rule;
- pipelines that take an input image: `--image FILE_OR_FOLDER`. Super-resolution and CycleGAN (`--direction`) are
  deterministic: one output per input (the first `--num_images` inputs). `--image` on a diffusion pipeline runs it
  as img2img (SDEdit, `--strength`, `--mask_image` to inpaint): inputs are resized to the model's sample size and
  cycled over `--num_images` (one output per input by default), each output with its own noise. The grid shows
  input | output pairs side by side (the input enlarged to the output's size, nearest neighbour), pairs read left
  to right, top to bottom.
Sample i is drawn with its own generator seeded from `--seed`, so it does not depend on `--batch_size`.
A flag the loaded pipeline does not take is an error naming the flag and the pipeline class.
"""

from __future__ import annotations

import argparse
import math

from custom_pipelines.call_inputs import add_conditioning_args, check_conditioning_args
from custom_pipelines.cli import add_fast_sampling_args, add_timesteps_args, console_entry, resolve_timesteps_args
from custom_pipelines.options import SCHEDULER_NAMES

DEFAULT_NUM_IMAGES = 64  # pipelines without input images; those make one image per input by default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--pipeline", required=True, help="a saved pipeline folder or Hub repo id")
    parser.add_argument("--output", required=True, help="PNG path of the grid")
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help=f"exactly this many images (default {DEFAULT_NUM_IMAGES}, rounded down to a multiple of the classes or "
        "prompts; with --image one per input)",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="images per pipeline call")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance_scale", type=float, default=None, help="class / text-conditional: CFG w")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None, help="swap in one of our samplers")
    add_timesteps_args(parser)
    add_fast_sampling_args(parser)
    add_conditioning_args(parser)
    args = parser.parse_args(argv)
    resolve_timesteps_args(args)
    for name in ("num_images", "batch_size", "num_inference_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if args.guidance_scale is not None and not 0 <= args.guidance_scale < math.inf:
        raise ValueError(f"--guidance_scale must be >= 0 and finite, got {args.guidance_scale}")
    check_conditioning_args(args)
    return args


def main(args: argparse.Namespace) -> str:
    import torch

    from custom_pipelines.call_inputs import plan_sampling, prepare_pipeline, sample_batches
    from custom_pipelines.hub.loader import load_pipeline
    from custom_pipelines.io import save_image
    from custom_pipelines.pipelines.fast_sampling import apply_fast_sampling_args
    from custom_pipelines.training.reporting import image_grid

    pipe = prepare_pipeline(load_pipeline(args.pipeline), args)
    apply_fast_sampling_args(pipe, args)
    plan = plan_sampling(pipe, args, args.num_images, DEFAULT_NUM_IMAGES, "num_images", rows_per_condition=True)
    batches = sample_batches(pipe, plan.num_samples, args.batch_size, args.seed, plan)
    outputs = [image for images, _ in batches for image in images]  # sizes may differ between inputs
    if plan.images is not None:
        pairs = [(input_tile(plan.input_image(i), output), output) for i, output in enumerate(outputs)]
        tiles = [resize_to(tile, outputs[0].shape[-2:]) for pair in pairs for tile in pair]
        pairs_per_row = max(1, round(math.sqrt(len(outputs) / 2)))
        grid, layout = image_grid(torch.stack(tiles), nrow=2 * pairs_per_row), "input | output pairs"
    else:
        grid = image_grid(torch.stack(outputs), nrow=plan.per_condition)
        kind = "class label" if plan.class_labels is not None else "prompt"
        layout = f"one row per {kind}, {plan.per_condition} each" if plan.per_condition else "grid"
    save_image(grid, args.output)
    for note in plan.notes:
        print(f"note: {note}")
    print(f"{type(pipe).__name__} from {args.pipeline}: {len(outputs)} images ({layout}) -> {args.output}")
    return args.output


def input_tile(image, output):
    """A PIL input image as a [C, H, W] tile in [0, 1] with the output's channels, enlarged to its size (nearest)."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("L" if output.shape[0] == 1 else "RGB"), dtype=np.float32) / 255.0
    tile = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)
    return torch.nn.functional.interpolate(tile[None], size=tuple(output.shape[-2:]), mode="nearest")[0]


def resize_to(tile, size):
    """Outputs of inputs with different sizes share the grid at the first output's size."""
    import torch

    if tuple(tile.shape[-2:]) == tuple(size):
        return tile
    return torch.nn.functional.interpolate(tile[None], size=tuple(size), mode="bilinear", antialias=True)[0]


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
