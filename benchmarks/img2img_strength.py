"""img2img (SDEdit): how far the output moves from the input as `strength` grows, on held-in digits with a trained
pixel pipeline (DDPM family or class-conditional). For each strength the same inputs and the same noise seed go
through `DiffusionImg2ImgPipeline`; it reports the mean per-image RMS distance output ↔ input (pixels in [0, 1]) and
writes <output_dir>/img2img_strength.{json,md}, a plot (img2img_strength.png) and a grid of the outputs (one row
per strength, img2img_strength_grid.png).

    python benchmarks/img2img_strength.py --pipeline runs/ddpm-digits
"""

from __future__ import annotations

import argparse
import os

STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", required=True, help="a pixel pipeline folder (train_ddpm.py / train_cfg.py)")
    parser.add_argument("--num_images", type=int, default=64, help="input digits")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="default: <pipeline>/img2img")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from custom_pipelines.data import ImageTransform, load_image_dataset
    from custom_pipelines.io import save_image, write_json
    from custom_pipelines.pipelines.pipeline_img2img import DiffusionImg2ImgPipeline
    from custom_pipelines.training.reporting import image_grid

    pipe = DiffusionImg2ImgPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    dataset = load_image_dataset("digits", resolution=size)
    transform = ImageTransform(size, channels, center_crop=True)
    images = torch.stack([transform(dataset[i]["image"]) for i in range(args.num_images)])
    inputs = (images + 1) / 2  # [0, 1]
    call = {"num_inference_steps": args.num_inference_steps, "output_type": "pt"}
    if pipe.is_class_conditional:  # each digit keeps its own class
        call["class_labels"] = [int(dataset[i]["label"]) for i in range(args.num_images)]

    rows, outputs = [], []
    for strength in args.strengths:
        generator = torch.Generator().manual_seed(args.seed)
        out = pipe(image=inputs, strength=strength, generator=generator, **call).images
        rms = ((out - inputs) ** 2).flatten(1).mean(1).sqrt()
        rows.append({"strength": strength, "rms_to_input": float(rms.mean()), "rms_std": float(rms.std())})
        outputs.append(out[:8])
    distances = [r["rms_to_input"] for r in rows]
    report = {
        "pipeline": args.pipeline,
        "num_images": args.num_images,
        "num_inference_steps": args.num_inference_steps,
        "rows": rows,
        "monotonic": all(a <= b for a, b in zip(distances, distances[1:])),
    }
    output_dir = args.output_dir or os.path.join(args.pipeline, "img2img")
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "img2img_strength.json"), report)
    lines = ["| strength | RMS distance to the input | std over images |", "|---|---|---|"]
    lines += [f"| {r['strength']:.1f} | {r['rms_to_input']:.4f} | {r['rms_std']:.4f} |" for r in rows]
    with open(os.path.join(output_dir, "img2img_strength.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(args.strengths, distances, yerr=[r["rms_std"] for r in rows], marker="o", capsize=3)
    ax.set_xlabel("strength")
    ax.set_ylabel("RMS distance output ↔ input")
    ax.set_title(f"img2img on digits, {args.num_inference_steps} steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "img2img_strength.png"), dpi=120)
    plt.close(fig)
    grid = torch.cat([inputs[:8], *outputs])  # first row: the inputs, then one row per strength
    save_image(image_grid(grid, nrow=8), os.path.join(output_dir, "img2img_strength_grid.png"))
    print("\n".join(lines))
    print("monotonic:", report["monotonic"])
    return report


if __name__ == "__main__":
    main(parse_args())
