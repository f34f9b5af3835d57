"""Reconstruction quality of train_vae.py runs on their held-out images (the run's own seeded split, never trained
on): PSNR (dB) and SSIM of the autoencoder (posterior mean), next to the baseline at the same compression factor f:
area-downsample by f, bicubic upsample back (what the latent's spatial size alone would allow), and the time to
encode + decode one image. Writes <output_dir>/vae_quality.{json,md} and one input | VAE | baseline strip per run.

    python benchmarks/vae_quality.py --runs runs/vae-digits-32 runs/vae-faces-32 --output_dir runs/vae-quality
"""

from __future__ import annotations

import argparse
import json
import os
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", required=True, help="train_vae.py output folders")
    parser.add_argument("--output_dir", default="benchmarks/results")
    parser.add_argument("--strip_images", type=int, default=8, help="held-out images shown per strip")
    return parser.parse_args(argv)


def heldout_images(report: dict, channels: int):
    """The run's held-out images as [N, C, H, W] in [-1, 1], rebuilt from `heldout_split` of its metrics JSON."""
    from custom_pipelines.training.data import load_train_dataset
    from training.train_vae import image_tensors, split_heldout

    split = dict(report["heldout_split"])
    resolution = split.pop("resolution")
    args = argparse.Namespace(**split, cache_dir=None)
    _, heldout = split_heldout(load_train_dataset(args, resolution), report["heldout_images"], args.seed)
    return image_tensors(heldout, args, resolution, channels)


def interpolation_baseline(images, factor: int):
    import torch.nn.functional as F

    small = F.interpolate(images, scale_factor=1 / factor, mode="area")
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)


def score(outputs, images) -> dict:
    from custom_pipelines.evaluation.image_quality import psnr, ssim
    from custom_pipelines.models.vae_losses import to_unit_range

    x, y = to_unit_range(images), to_unit_range(outputs)
    return {"psnr": float(psnr(y, x).mean()), "ssim": float(ssim(y, x).mean())}


def evaluate_run(run: str, strip_images: int) -> tuple[dict, object]:
    import torch
    from diffusers import AutoencoderKL

    from training.train_vae import METRICS_JSON, downsampling_factor, reconstruct

    with open(os.path.join(run, METRICS_JSON), encoding="utf-8") as f:
        report = json.load(f)
    vae = AutoencoderKL.from_pretrained(run).eval()
    images = heldout_images(report, vae.config.in_channels)
    factor = downsampling_factor(vae)
    start = time.perf_counter()
    outputs = reconstruct(vae, images, batch_size=64)
    seconds = (time.perf_counter() - start) / len(images)
    baseline = interpolation_baseline(images, factor)
    row = {
        "run": run,
        "f": factor,
        "latent_shape": report["latent_shape"],
        "heldout_images": len(images),
        "steps": report["global_step"],
        "vae": score(outputs, images),
        "area_bicubic": score(baseline, images),
        "ms_per_image_encode_decode": 1000 * seconds,
        "threads": torch.get_num_threads(),
    }
    n = min(strip_images, len(images))
    strip = torch.cat([images[:n], outputs[:n], baseline[:n]], dim=-1)  # input | VAE | baseline per tile
    return row, (strip + 1) / 2


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | f | latent | held-out | steps | VAE PSNR | VAE SSIM | area→bicubic PSNR | SSIM | ms/image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['run']}` | {r['f']} | {'×'.join(map(str, r['latent_shape']))} | {r['heldout_images']} | "
            f"{r['steps']} | {r['vae']['psnr']:.2f} | {r['vae']['ssim']:.3f} | {r['area_bicubic']['psnr']:.2f} | "
            f"{r['area_bicubic']['ssim']:.3f} | {r['ms_per_image_encode_decode']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> list[dict]:
    from custom_pipelines.io import save_image, write_json
    from custom_pipelines.training.reporting import image_grid

    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    for run in args.runs:
        row, strip = evaluate_run(run, args.strip_images)
        rows.append(row)
        name = os.path.basename(os.path.normpath(run))
        save_image(image_grid(strip, nrow=1), os.path.join(args.output_dir, f"vae_quality_{name}.png"))
    write_json(os.path.join(args.output_dir, "vae_quality.json"), rows)
    table = markdown(rows)
    with open(os.path.join(args.output_dir, "vae_quality.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return rows


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for `training`
    main(parse_args())
