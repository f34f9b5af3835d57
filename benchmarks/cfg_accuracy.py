"""Class accuracy and diversity of classifier-free guidance vs the guidance scale, on a real digits model.

1. Trains `training/train_cfg.py` on the built-in digits (16×16, hub_configs/cfg-digits-16, p_uncond 0.1) for a
   few hundred steps on the CPU (skip with `--skip_training` to reuse a run).
2. For each guidance scale w, samples `--samples_per_class` images of every class with seeded per-sample
   generators (the same starting noise for every w) and scores them with the digits classifier, which is trained
   on real digits only (`custom_pipelines.evaluation.load_digits_classifier`):
   - class accuracy: share of samples the classifier assigns to the requested class;
   - diversity: per-class variance of the classifier's penultimate features (mean over feature dimensions, then
     over classes), next to the same statistic of real digits (test split);
   - digits-FID of all samples against the real digits (biased at this sample count: compare across w only).
3. Writes benchmarks/results/cfg_accuracy.md (table), cfg_accuracy.png (plot) and cfg_grid.png (one row per class,
   one column block per w, same noise in each column).

    python benchmarks/cfg_accuracy.py                          # train (~10 min on 2 busy cores) + evaluate
    python benchmarks/cfg_accuracy.py --skip_training --run_dir runs/cfg-bench
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from custom_pipelines.evaluation.digits_classifier import DigitsFeatureExtractor, load_digits_classifier
from custom_pipelines.evaluation.evaluator import sample_images
from custom_pipelines.evaluation.features import load_digits_images
from custom_pipelines.evaluation.metrics import fid_from_features
from custom_pipelines.pipelines.guidance import digits_classifier_guidance, mean_color_loss
from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline
from custom_pipelines.training.reporting import image_grid
from training import train_cfg

TRAIN_TIME_FILE = "bench_train_time.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_dir", default="runs/cfg-bench")
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--max_train_steps", type=int, default=400)
    parser.add_argument("--conditioning", default="embedding", choices=("embedding", "concat"))
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--samples_per_class", type=int, default=20)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss_guidance_samples_per_class", type=int, default=5, help="0 skips that table")
    return parser.parse_args(argv)


def train(args) -> float:
    flags = [
        "--dataset_name", "digits", "--output_dir", args.run_dir, "--model_config", "cfg-digits-16",
        "--conditioning", args.conditioning, "--conditioning_dropout", "0.1",
        "--max_train_steps", str(args.max_train_steps), "--train_batch_size", "64", "--learning_rate", "1e-3",
        "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--mixed_precision", "auto",
        "--checkpointing_steps", "100000", "--validation_steps", "100000", "--num_validation_images", "20",
        "--num_inference_steps", "25", "--report_to", "none", "--seed", str(args.seed),
    ]  # fmt: skip
    start = time.perf_counter()
    train_cfg.main(train_cfg.parse_args(flags))
    seconds = time.perf_counter() - start
    with open(os.path.join(args.run_dir, TRAIN_TIME_FILE), "w", encoding="utf-8") as f:
        json.dump({"train_seconds": seconds, "max_train_steps": args.max_train_steps}, f)
    return seconds


def previous_train_seconds(args) -> float | None:
    """The training time recorded when `--run_dir` was trained by this script (for `--skip_training`)."""
    path = os.path.join(args.run_dir, TRAIN_TIME_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    args.max_train_steps = record["max_train_steps"]
    return record["train_seconds"]


def per_class_feature_variance(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean (over dimensions) variance of the features within the class."""
    variances = [features[labels == c].var(dim=0).mean() for c in labels.unique()]
    return float(torch.stack(variances).mean())


def evaluate_scale(pipe, extractor, w: float, args) -> dict:
    num_samples = 10 * args.samples_per_class
    images, labels = [], []
    for batch_images, batch_labels in sample_images(
        pipe, num_samples, args.batch_size, args.seed, class_labels=range(10), guidance_scale=w,
        num_inference_steps=args.num_inference_steps,
    ):  # fmt: skip
        images.append(batch_images)
        labels.append(batch_labels)
    images, labels = torch.cat(images), torch.cat(labels)
    features, logits = extractor.features_and_logits(images)
    return {
        "guidance_scale": w,
        "accuracy": float((logits.argmax(dim=-1) == labels).float().mean()),
        "feature_variance": per_class_feature_variance(features, labels),
        "features": features,
        "images": images,
        "labels": labels,
    }


def write_table(rows: list[dict], real_variance: float, train_seconds: float | None, args) -> str:
    lines = [
        "# Classifier-free guidance: class accuracy and diversity vs w",
        "",
        f"Digits 16×16, `train_cfg.py` ({args.conditioning} conditioning, p_uncond 0.1, "
        f"{args.max_train_steps} steps, batch 64, bf16 autocast"
        + (f", {train_seconds / 60:.1f} min on this CPU" if train_seconds else "")
        + f"); {10 * args.samples_per_class} samples per scale ({args.samples_per_class} per class), "
        f"DDPM ancestral, {args.num_inference_steps} steps. Scored by the digits classifier trained on real digits.",
        "",
        "| guidance scale w | class accuracy | per-class feature variance | digits-FID |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['guidance_scale']:g} | {row['accuracy']:.3f} | {row['feature_variance']:.3f} | {row['fid']:.2f} |"
        )
    lines += [
        "",
        f"Real digits (test split, 450 images): per-class feature variance {real_variance:.3f}. At w = 0 the model "
        "ignores the label, so its per-class variance is that of all digits mixed and its accuracy is chance (0.1).",
        "",
        "`cfg_grid.png`: one row per class (0 to 9), one block of two columns per w "
        f"({', '.join(f'{w:g}' for w in args.guidance_scales)}), the same starting noise in each column of a block.",
        "",
    ]
    return "\n".join(lines)


def plot(rows: list[dict], real_variance: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["guidance_scale"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(scales, [r["accuracy"] for r in rows], "o-", color="tab:blue", label="class accuracy")
    ax1.set_xlabel("guidance scale w")
    ax1.set_ylabel("class accuracy", color="tab:blue")
    ax1.set_ylim(0, 1.02)
    ax2 = ax1.twinx()
    ax2.plot(scales, [r["feature_variance"] for r in rows], "s--", color="tab:red", label="feature variance")
    ax2.axhline(real_variance, color="tab:red", alpha=0.4, linestyle=":", label="real digits")
    ax2.set_ylabel("per-class feature variance", color="tab:red")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    ax1.set_title("Classifier-free guidance on digits 16×16")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def class_grid(rows: list[dict], columns_per_scale: int = 2):
    """One row per class; for each w a block of `columns_per_scale` samples (same noise across w)."""
    tiles = []
    for c in range(10):
        for row in rows:
            of_class = row["images"][row["labels"] == c][:columns_per_scale]
            tiles.append(of_class)
    return image_grid(torch.cat(tiles), nrow=len(rows) * columns_per_scale)


def loss_guidance_table(pipe, classifier, args) -> str:
    """Loss guidance on the same model: a brightness target on top of CFG, and classifier guidance on the
    unconditional model (w = 0). Same seeds in every row."""
    labels = [c for c in range(10) for _ in range(args.loss_guidance_samples_per_class)]
    cases = [
        ("CFG w=2", 2.0, None, 0.0),
        ("CFG w=2 + `mean_color_loss(0.4)`, s=0.5", 2.0, mean_color_loss(0.4), 0.5),
        ("unconditional (w=0)", 0.0, None, 0.0),
        ("w=0 + `digits_classifier_guidance`, s=0.5", 0.0, digits_classifier_guidance(classifier, labels), 0.5),
    ]
    lines = ["| sampling | mean brightness | class accuracy* |", "|---|---:|---:|"]
    for name, w, guidance_fn, strength in cases:
        images = pipe(
            class_labels=labels,
            guidance_scale=w,
            num_inference_steps=args.num_inference_steps,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in range(len(labels))],
            output_type="pt",
            guidance_fn=guidance_fn,
            guidance_strength=strength,
        ).images
        accuracy = float((classifier.classify(images)[0].cpu() == torch.tensor(labels)).float().mean())
        lines.append(f"| {name} | {float(images.mean()):.3f} | {accuracy:.2f} |")
        print(lines[-1])
    note = (
        f"\n{len(labels)} samples per row. *Scored by the digits classifier, which also guides the last row: that "
        "row's accuracy is biased upwards (the samples are optimised against the judge), look at the images.\n"
    )
    return "\n".join(lines) + "\n" + note


def main(args: argparse.Namespace) -> list[dict]:
    os.makedirs(args.results_dir, exist_ok=True)
    train_seconds = previous_train_seconds(args) if args.skip_training else train(args)
    pipe = ClassConditionalDiffusionPipeline.from_pretrained(args.run_dir)
    pipe.set_progress_bar_config(disable=True)
    extractor = DigitsFeatureExtractor(load_digits_classifier(16))
    real_images, real_labels = load_digits_images("test", 16)
    real_features = extractor(real_images)
    real_variance = per_class_feature_variance(real_features, real_labels)
    rows = []
    for w in args.guidance_scales:
        start = time.perf_counter()
        row = evaluate_scale(pipe, extractor, w, args)
        row["fid"] = fid_from_features(real_features, row["features"], method="eigh")
        row["sampling_seconds"] = time.perf_counter() - start
        print(f"w={w:g}: accuracy {row['accuracy']:.3f}, variance {row['feature_variance']:.3f}, fid {row['fid']:.2f}")
        rows.append(row)
    table = write_table(rows, real_variance, train_seconds, args)
    if args.loss_guidance_samples_per_class > 0:
        table += "\n## Loss guidance on the same model\n\n" + loss_guidance_table(pipe, extractor.model, args)
    with open(os.path.join(args.results_dir, "cfg_accuracy.md"), "w", encoding="utf-8") as f:
        f.write(table)
    plot(rows, real_variance, os.path.join(args.results_dir, "cfg_accuracy.png"))
    class_grid(rows).save(os.path.join(args.results_dir, "cfg_grid.png"))
    summary = [{k: v for k, v in r.items() if k not in ("features", "images", "labels")} for r in rows]
    with open(os.path.join(args.results_dir, "cfg_accuracy.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"real_feature_variance": real_variance, "train_seconds": train_seconds, "rows": summary}, f, indent=2
        )
    print(table)
    return summary


if __name__ == "__main__":
    main(parse_args())
