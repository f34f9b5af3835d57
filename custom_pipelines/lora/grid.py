"""A comparison grid of a LoRA at several scales: one row per class (or per sample), one column block per scale
(scale 0 is the base model exactly), the same starting noise in every block.

    python -m custom_pipelines.lora.grid --base runs/cfg-digits-0to4 --lora runs/lora-digits-5to9 \\
        --scales 0 0.5 1 --output runs/lora-digits-5to9/lora_grid.png
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the base pipeline folder or Hub repo id")
    parser.add_argument("--lora", required=True, help="the adapter folder, file or Hub repo id")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="adapter weights, ≥ 0")
    parser.add_argument("--samples_per_row", type=int, default=4)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=2.0, help="class-conditional models only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="PNG path")
    args = parser.parse_args(argv)
    if args.samples_per_row < 1 or args.num_inference_steps < 1:
        parser.error("--samples_per_row and --num_inference_steps must be >= 1")
    if any(s < 0 for s in args.scales):
        parser.error(f"--scales must be >= 0, got {args.scales}")
    return args


def lora_grid(pipe, scales: list[float], samples_per_row: int, seed: int, **call_kwargs):
    """[rows × (len(scales) · samples_per_row)] images in [0, 1]: rows are the classes of a class model (else one
    row), each block one adapter weight; the per-sample seeds are the same in every block."""
    import torch

    num_classes = getattr(pipe, "num_classes", 0) or 0
    rows = list(range(num_classes)) if num_classes else [None]
    tiles = []
    for row in rows:
        for scale in scales:
            pipe.set_adapters(pipe.get_list_adapters()["unet"][0], scale)
            generators = [torch.Generator().manual_seed(seed + i) for i in range(samples_per_row)]
            kwargs = dict(call_kwargs)
            if row is not None:
                kwargs["class_labels"] = [row] * samples_per_row
            else:
                kwargs["batch_size"] = samples_per_row
                kwargs.pop("guidance_scale", None)
            tiles.append(pipe(generator=generators, output_type="pt", **kwargs).images.cpu())
    return torch.cat(tiles), len(scales) * samples_per_row


def main(args: argparse.Namespace) -> str:
    from custom_pipelines.hub.loader import load_pipeline
    from custom_pipelines.io import save_image
    from custom_pipelines.training.reporting import image_grid

    pipe = load_pipeline(args.base)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(args.lora, adapter_name="lora")
    images, per_row = lora_grid(
        pipe, args.scales, args.samples_per_row, args.seed,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
    )  # fmt: skip
    save_image(image_grid(images, nrow=per_row), args.output)
    print(f"{args.output}: one row per class, blocks of {args.samples_per_row} at LoRA scales {args.scales}")
    return args.output


if __name__ == "__main__":
    from custom_pipelines.cli import run_cli

    run_cli(lambda: main(parse_args()))
