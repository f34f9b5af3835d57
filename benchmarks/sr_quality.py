"""Super-resolution quality on the held-out photos (chelsea, flower; never trained on): PSNR / SSIM on the Y channel
with a border crop of `scale` pixels (BasicSR's convention) and the no-reference sharpness (mean |Laplacian| of luma),
for PIL bicubic upscaling, the untrained generator (its image skip alone), the SRResNet run and, optionally, the
SRGAN run started from it. With both runs it reports the perception–distortion trade-off (Blau & Michaeli 2018):
the GAN stage gives up PSNR for sharper texture. Writes <output_dir>/sr_quality.{json,md} and sr_quality_crops.png
(side-by-side crops: bicubic | SRResNet | SRGAN | HR).

    python benchmarks/sr_quality.py --srresnet runs/srresnet-x4 --srgan runs/srgan-x4
"""

from __future__ import annotations

import argparse
import json
import os


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--srresnet", required=True, help="SuperResolutionPipeline folder of the SRResNet stage")
    parser.add_argument("--srgan", default=None, help="SuperResolutionPipeline folder of the SRGAN stage")
    parser.add_argument("--output_dir", default="benchmarks/results")
    parser.add_argument("--tile_size", type=int, default=None, help="tiled inference (input pixels per tile side)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    import torch

    from custom_pipelines.data.paired import comparison_strips, score_held_out
    from custom_pipelines.gan.srgan import SRResNetGenerator
    from custom_pipelines.io import save_image, write_json
    from custom_pipelines.pipelines.pipeline_super_resolution import SuperResolutionPipeline
    from custom_pipelines.training.reporting import image_grid

    runs = {"srresnet": args.srresnet} | ({"srgan": args.srgan} if args.srgan else {})
    pipes = {name: SuperResolutionPipeline.from_pretrained(path) for name, path in runs.items()}
    torch.manual_seed(0)
    pipes["untrained"] = SuperResolutionPipeline(
        upscaler=SRResNetGenerator.from_config(pipes["srresnet"].upscaler.config).eval()
    )
    scale = pipes["srresnet"].scale_factor
    rows, outputs = {}, None
    for name, pipe in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        result = score_held_out(
            lambda lr, pipe=pipe: pipe(lr, output_type="pt", tile_size=args.tile_size).images, scale
        )
        rows.setdefault("bicubic", result["bicubic"])
        rows[name] = result["model"]
        if outputs is None:
            outputs = {photo: {"bicubic": o["bicubic"], "hr": o["hr"]} for photo, o in result["outputs"].items()}
        for photo, o in result["outputs"].items():
            outputs[photo][name] = o["model"]
    report = {"scale": scale, "held_out": sorted(outputs), "runs": runs, "scores": rows}
    if "srgan" in rows:
        report["perception_distortion"] = {
            "psnr_drop_db": rows["srresnet"]["psnr_y"] - rows["srgan"]["psnr_y"],
            "sharpness_ratio": rows["srgan"]["sharpness"] / rows["srresnet"]["sharpness"],
            "hr_sharpness_ratio_srgan": rows["srgan"]["sharpness"] / _hr_sharpness(outputs, scale),
        }
    os.makedirs(args.output_dir, exist_ok=True)
    columns = ["bicubic", "srresnet", *(["srgan"] if "srgan" in rows else []), "hr"]
    crops = image_grid(comparison_strips(outputs, columns, num_strips=4, crop_size=96), nrow=1)
    save_image(crops, os.path.join(args.output_dir, "sr_quality_crops.png"))
    write_json(os.path.join(args.output_dir, "sr_quality.json"), report)
    with open(os.path.join(args.output_dir, "sr_quality.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(report, columns))
    print(json.dumps(report, indent=2))
    return report


def _hr_sharpness(outputs: dict, scale: int) -> float:
    from custom_pipelines.data.paired import sr_scores

    values = [float(sr_scores(o["hr"], o["hr"], scale)["sharpness"].mean()) for o in outputs.values()]
    return sum(values) / len(values)


def _markdown(report: dict, columns: list[str]) -> str:
    lines = [
        f"# ×{report['scale']} super-resolution on the held-out photos ({', '.join(report['held_out'])})",
        "",
        "PSNR / SSIM on Y, border crop = scale (BasicSR); sharpness = mean |Laplacian| of luma (higher is sharper).",
        "",
        "| method | PSNR_Y (dB) | SSIM_Y | sharpness |",
        "|---|---|---|---|",
    ]
    for name, row in report["scores"].items():
        lines.append(f"| {name} | {row['psnr_y']:.2f} | {row['ssim_y']:.4f} | {row['sharpness']:.5f} |")
    if "perception_distortion" in report:
        pd = report["perception_distortion"]
        lines += [
            "",
            f"Perception–distortion: the GAN stage gives up {pd['psnr_drop_db']:.2f} dB PSNR_Y for "
            f"{pd['sharpness_ratio']:.2f}× the SRResNet's sharpness ({pd['hr_sharpness_ratio_srgan']:.2f}× the HR's).",
        ]
    lines += ["", f"Crops (`sr_quality_crops.png`): {' | '.join(columns)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
