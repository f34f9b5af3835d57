"""LoRA (rank 4, 8, 16) vs full fine-tuning at equal steps on the same data: a class-conditional digits model
(hub_configs/cfg-digits-16) pre-trained on digits 0–4 (`--class_filter`), then fine-tuned on digits 5–9.

For each variant: class accuracy and digits-FID on the new classes (5–9) and on the old ones (0–4, how much of the
base's quality is kept), the size of what is saved (adapter file vs the UNet's weights), the median training step
time and the peak RSS of the fine-tuning process (each variant runs in its own process, one after the other), and the
trained parameters / optimizer state. Scored with the project's digits classifier (trained on real digits only).

    python benchmarks/lora_vs_full.py                       # pre-train + 4 fine-tunes + evaluation
    python benchmarks/lora_vs_full.py --skip_pretraining    # reuse <run_dir>/base

Writes benchmarks/results/lora_vs_full.md and lora_vs_full.png (rows: classes 0–9; blocks: base, full, r4, r8, r16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD, NEW = list(range(5)), list(range(5, 10))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_dir", default="runs/lora-bench")
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--skip_pretraining", action="store_true")
    parser.add_argument("--pretrain_steps", type=int, default=200)
    parser.add_argument("--finetune_steps", type=int, default=80)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--full_learning_rate", type=float, default=3e-4)
    parser.add_argument("--lora_learning_rate", type=float, default=2e-3)
    parser.add_argument("--samples_per_class", type=int, default=20)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one fine-tune in this process
    return parser.parse_args(argv)


def common_flags(args, output_dir: str, steps: int, classes: list[int]) -> list[str]:
    return [
        "--dataset_name", "digits", "--output_dir", output_dir, "--overwrite_output_dir",
        "--model_config", "cfg-digits-16", "--conditioning_dropout", "0.1", "--class_filter", *map(str, classes),
        "--max_train_steps", str(steps), "--train_batch_size", str(args.batch_size), "--lr_warmup_steps", "0",
        "--checkpointing_steps", "100000", "--validation_steps", "100000", "--num_validation_images", "10",
        "--num_inference_steps", "10", "--report_to", "none", "--seed", str(args.seed), "--mixed_precision", "auto",
    ]  # fmt: skip


def pretrain(args) -> None:
    from training import train_cfg

    flags = common_flags(args, os.path.join(args.run_dir, "base"), args.pretrain_steps, OLD)
    train_cfg.main(train_cfg.parse_args([*flags, "--learning_rate", "1e-3", "--lr_scheduler", "cosine"]))


def variant_flags(args, name: str) -> list[str]:
    base = ["--pretrained_model_name_or_path", os.path.join(args.run_dir, "base"), "--lr_scheduler", "constant"]
    if name == "full":
        return [*base, "--learning_rate", str(args.full_learning_rate)]
    return [*base, "--learning_rate", str(args.lora_learning_rate), "--lora_rank", name.removeprefix("r")]


def run_child(args) -> None:
    """One fine-tune in this process: step times (wall clock between optimizer updates) and peak RSS to JSON."""
    import torch

    from custom_pipelines.training.trainer import Trainer
    from training import train_cfg

    torch.set_num_threads(2)
    stamps, state = [], {}
    after_update = Trainer._after_update

    def timed(self):
        after_update(self)
        stamps.append(time.perf_counter())
        if "trainable" not in state:
            model = self.unwrap("unet")
            trainable = [p for p in model.parameters() if p.requires_grad]
            state["trainable"] = sum(p.numel() for p in trainable)
            state["total"] = sum(p.numel() for p in model.parameters())
            opt = self.optimizers["unet"].optimizer if hasattr(self.optimizers["unet"], "optimizer") else None
            opt = opt or self.optimizers["unet"]
            state["optimizer_state_bytes"] = sum(
                t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
            )

    Trainer._after_update = timed
    out = os.path.join(args.run_dir, args.child)
    flags = common_flags(args, out, args.finetune_steps, NEW)
    train_cfg.main(train_cfg.parse_args([*flags, *variant_flags(args, args.child)]))
    steps = [b - a for a, b in zip(stamps[4:], stamps[5:])]  # the first updates warm up the kernels
    record = {
        **state,
        "median_step_s": statistics.median(steps),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def load_variant(args, name: str):
    from custom_pipelines.pipelines.pipeline_class_conditional import ClassConditionalDiffusionPipeline

    pipe = ClassConditionalDiffusionPipeline.from_pretrained(
        os.path.join(args.run_dir, "full" if name == "full" else "base")
    )
    if name.startswith("r"):
        pipe.load_lora_weights(os.path.join(args.run_dir, name), adapter_name=name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def score(pipe, classes: list[int], extractor, real_features, args) -> tuple[float, float, torch.Tensor]:
    import torch

    from custom_pipelines.evaluation.metrics import fid_from_features
    from custom_pipelines.pipelines.utils import sample_images

    images, labels = [], []
    for batch, batch_labels in sample_images(
        pipe, len(classes) * args.samples_per_class, 100, args.seed, class_labels=classes,
        guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
    ):  # fmt: skip
        images.append(batch)
        labels.append(batch_labels)
    images, labels = torch.cat(images), torch.cat(labels)
    features, logits = extractor.features_and_logits(images)
    accuracy = float((logits.argmax(dim=-1) == labels).float().mean())
    return accuracy, fid_from_features(features, real_features), images[labels.argsort(stable=True)]


def evaluate(args) -> list[dict]:
    import torch

    from custom_pipelines.evaluation.digits_classifier import DigitsFeatureExtractor, load_digits_classifier
    from custom_pipelines.evaluation.features import load_digits_images
    from custom_pipelines.lora import LORA_WEIGHT_NAME
    from custom_pipelines.training.reporting import image_grid

    extractor = DigitsFeatureExtractor(load_digits_classifier(16))
    real, real_labels = load_digits_images("all", 16)
    real_features = {
        "old": extractor.features_and_logits(real[torch.isin(real_labels, torch.tensor(OLD))])[0],
        "new": extractor.features_and_logits(real[torch.isin(real_labels, torch.tensor(NEW))])[0],
    }
    unet_bytes = os.path.getsize(os.path.join(args.run_dir, "base", "unet", "diffusion_pytorch_model.safetensors"))
    rows, grid_tiles = [], []
    for name in ["base", "full", *(f"r{r}" for r in args.ranks)]:
        pipe = load_variant(args, name)
        new_acc, new_fid, new_images = score(pipe, NEW, extractor, real_features["new"], args)
        old_acc, old_fid, old_images = score(pipe, OLD, extractor, real_features["old"], args)
        bench = {}
        if name != "base":
            with open(os.path.join(args.run_dir, name, "bench.json"), encoding="utf-8") as f:
                bench = json.load(f)
        saved = unet_bytes if name in ("base", "full") else os.path.getsize(
            os.path.join(args.run_dir, name, LORA_WEIGHT_NAME))  # fmt: skip
        rows.append({"variant": name, "new_accuracy": new_acc, "new_fid": new_fid, "old_accuracy": old_acc,
                     "old_fid": old_fid, "saved_bytes": saved, **bench})  # fmt: skip
        print(rows[-1])
        per_class = torch.cat([old_images, new_images]).reshape(10, args.samples_per_class, *new_images.shape[1:])
        grid_tiles.append(per_class[:, :3])
    grid = torch.cat(grid_tiles, dim=1).flatten(0, 1)
    image_grid(grid, nrow=3 * len(grid_tiles)).save(os.path.join(args.results_dir, "lora_vs_full.png"))
    return rows


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__}, capability {capability}"


def write_table(rows: list[dict], args) -> str:
    def size(n):
        return f"{n / 1024:.0f} KB" if n < 1024**2 else f"{n / 1024**2:.2f} MB"

    lines = [
        "# LoRA vs full fine-tuning (`benchmarks/lora_vs_full.py`)",
        "",
        f"cfg-digits-16 (class embedding, p_uncond 0.1) pre-trained {args.pretrain_steps} steps on digits 0–4, then "
        f"fine-tuned {args.finetune_steps} steps on digits 5–9 (batch {args.batch_size}, constant lr: full "
        f"{args.full_learning_rate:g}, LoRA {args.lora_learning_rate:g}, EMA, precision `auto`). Sampling: "
        f"{args.samples_per_class} per class, {args.num_inference_steps} DDPM steps, w = {args.guidance_scale:g}. "
        "Accuracy and digits-FID by the digits classifier (FID against the real digits of the same classes; biased at "
        f"this sample count, compare rows only). CPU: {cpu_name()}; a shared, busy machine (times ±30%).",
        "",
        "| variant | new 5–9 accuracy | new FID | old 0–4 accuracy | old FID | saved | trained params | "
        "optimizer state | step time | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        trained = f"{r['trainable']:,} / {r['total']:,}" if "trainable" in r else "—"
        state = size(r["optimizer_state_bytes"]) if "optimizer_state_bytes" in r else "—"
        step = f"{1000 * r['median_step_s']:.0f} ms" if "median_step_s" in r else "—"
        rss = f"{r['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in r else "—"
        lines.append(
            f"| {r['variant']} | {r['new_accuracy']:.2f} | {r['new_fid']:.1f} | {r['old_accuracy']:.2f} | "
            f"{r['old_fid']:.1f} | {size(r['saved_bytes'])} | {trained} | {state} | {step} | {rss} |"
        )
    lines += ["", "`lora_vs_full.png`: rows = classes 0–9; column blocks of 3: base, full, "
              + ", ".join(f"LoRA r{r}" for r in args.ranks) + " (same noise in each block).", ""]  # fmt: skip
    return "\n".join(lines)


def main(args) -> None:
    if args.child:
        run_child(args)
        return
    os.makedirs(args.results_dir, exist_ok=True)
    if not args.skip_pretraining:
        pretrain(args)
    for name in ["full", *(f"r{r}" for r in args.ranks)]:
        argv = [a for a in sys.argv[1:] if a != "--skip_pretraining"]
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--child", name], check=True, cwd=REPO)
    rows = evaluate(args)
    table = write_table(rows, args)
    with open(os.path.join(args.results_dir, "lora_vs_full.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main(parse_args())
