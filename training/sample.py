"""Load a saved pipeline (folder or Hub repo id) with `from_pretrained` and write a grid of samples.

python -m training.sample --pipeline runs/ddpm-digits --num_images 64 --output runs/ddpm-digits/samples.png
"""

from __future__ import annotations

import argparse
import inspect

from custom_pipelines.cli import add_fast_sampling_args, add_timesteps_args, console_entry, resolve_timesteps_args
from custom_pipelines.options import SCHEDULER_NAMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a saved pipeline folder or Hub repo id")
    parser.add_argument("--output", required=True, help="PNG path of the grid")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance_scale", type=float, default=None, help="class-conditional pipelines: CFG w")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None, help="swap in one of our samplers")
    add_timesteps_args(parser)
    add_fast_sampling_args(parser)
    args = parser.parse_args(argv)
    resolve_timesteps_args(args)
    if args.num_images < 1:
        raise ValueError(f"--num_images must be a positive integer, got {args.num_images}")
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        raise ValueError(f"--num_inference_steps must be a positive integer, got {args.num_inference_steps}")
    return args


def main(args: argparse.Namespace) -> str:
    import torch

    from custom_pipelines.hub.loader import load_pipeline
    from custom_pipelines.io import save_image
    from custom_pipelines.models.class_conditioning import num_classes_of
    from custom_pipelines.pipelines.fast_sampling import apply_fast_sampling_args
    from custom_pipelines.schedulers import scheduler_from_name
    from custom_pipelines.training.reporting import image_grid

    pipe = load_pipeline(args.pipeline)
    if args.scheduler is not None:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    apply_fast_sampling_args(pipe, args)
    accepted = inspect.signature(pipe.__call__).parameters
    kwargs = {"generator": torch.Generator().manual_seed(args.seed), "output_type": "pt"}
    nrow = None
    if "class_labels" in accepted:  # one row per class, num_images in all
        num_classes = num_classes_of(pipe.unet)
        nrow = max(1, args.num_images // num_classes)
        kwargs["class_labels"] = [c for c in range(num_classes) for _ in range(nrow)]
    else:
        kwargs["batch_size"] = args.num_images
    if args.num_inference_steps is not None and "num_inference_steps" in accepted:
        kwargs["num_inference_steps"] = args.num_inference_steps
    if args.guidance_scale is not None:
        if "guidance_scale" not in accepted:
            raise ValueError(f"--guidance_scale: {type(pipe).__name__} takes no guidance_scale")
        kwargs["guidance_scale"] = args.guidance_scale
    if args.timesteps is not None:
        if "timesteps" not in accepted:
            raise ValueError(f"--timesteps: {type(pipe).__name__} takes no timesteps")
        kwargs["timesteps"] = args.timesteps
    images = pipe(**kwargs).images
    save_image(image_grid(images, nrow=nrow), args.output)
    print(f"{type(pipe).__name__} from {args.pipeline}: {len(images)} samples -> {args.output}")
    return args.output


cli = console_entry(lambda: main(parse_args()))  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
