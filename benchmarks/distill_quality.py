"""Few-step quality of consistency-distilled students vs the teacher's solvers, per network evaluation (NFE).

    python benchmarks/distill_quality.py --teacher runs/ddpm-digits \\
        --students runs/ddpm-digits-distill-s0 runs/ddpm-digits-distill-s1 --num_samples 1000

Unconditional section: digits-FID (the project's evaluation: digits-classifier features, `--num_samples` samples vs
the 1797 real digits, seed 0 for every row) at NFE 1, 2, 4, 8 for
- the teacher with DDIM (η = 0, trailing), the teacher with DPM-Solver++(2M) (trailing + dynamic thresholding),
  the teacher on the schedule `optimize_timesteps` fits to it (DPM-Solver++(2M) for NFE ≥ 2), and the teacher's
  DDIM-50 (the reference the targets are ratios to);
- every student (one per distillation seed: mean and spread reported) with its `LCMScheduler`.
It also times a batch of `--timing_batch` images at 1, 2 and 4 student steps against the teacher's DDIM-50, in the
same process, one after the other.

Class section (`--class_teacher`, `--class_students`): the digits classifier's class accuracy at w = 1 and 2 for the
teacher (CFG, DDIM-50: two UNet rows per image and step) and the students (one pass per step) at NFE 1, 2, 4.

Writes benchmarks/results/distill_quality.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from custom_pipelines import load_pipeline, optimize_timesteps
from custom_pipelines.evaluation import build_feature_extractor, evaluate_pipeline, reference_features
from custom_pipelines.evaluation.digits_classifier import DigitsFeatureExtractor, load_digits_classifier
from custom_pipelines.evaluation.evaluator import sample_images

TRAILING = {"timestep_spacing": "trailing"}
DPM = {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": True, **TRAILING}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="runs/ddpm-digits")
    parser.add_argument("--students", nargs="*", default=[], help="distilled students of --teacher (one per seed)")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--skip_fitted", action="store_true", help="leave out the fitted-schedule row (slow)")
    parser.add_argument("--timing_batch", type=int, default=64)
    parser.add_argument("--class_teacher", default=None, help="a ClassConditionalDiffusionPipeline")
    parser.add_argument("--class_students", nargs="*", default=[])
    parser.add_argument("--samples_per_class", type=int, default=50)
    parser.add_argument("--results_dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.num_samples < 2 or min(args.nfe) < 1:
        raise ValueError(f"--num_samples must be >= 2 and --nfe >= 1, got {args.num_samples}, {args.nfe}")
    return args


def fid(pipe, args, real, extractor, **steps) -> float:
    return evaluate_pipeline(pipe, args.num_samples, real, extractor, batch_size=250, kid_subsets=10, **steps)["fid"]


def unconditional_rows(args) -> tuple[dict, dict]:
    """{row name: {nfe: FID}} and the timings."""
    teacher = load_pipeline(args.teacher)
    teacher.set_progress_bar_config(disable=True)
    base = teacher.scheduler.config
    resolution = teacher.unet.config.sample_size
    extractor = build_feature_extractor("digits", resolution=resolution)
    real = reference_features("digits", extractor, resolution)
    rows: dict[str, dict[int, float]] = {}
    teacher.scheduler = DDIMScheduler.from_config(base, **TRAILING)
    rows["teacher DDIM (η=0)"] = {n: fid(teacher, args, real, extractor, num_inference_steps=n) for n in args.nfe}
    reference = fid(teacher, args, real, extractor, num_inference_steps=50)
    rows["teacher DDIM (η=0)"][50] = reference
    print(f"teacher DDIM: {rows['teacher DDIM (η=0)']}", flush=True)
    teacher.scheduler = DPMSolverMultistepScheduler.from_config(base, **DPM)
    rows["teacher DPM-Solver++(2M) trailing + thresholding"] = {
        n: fid(teacher, args, real, extractor, num_inference_steps=n) for n in args.nfe
    }
    print(f"teacher DPM: {rows['teacher DPM-Solver++(2M) trailing + thresholding']}", flush=True)
    if not args.skip_fitted:
        fitted_nfe = [n for n in args.nfe if n >= 2]
        schedules = optimize_timesteps(teacher, fitted_nfe, num_samples=256, batch_size=256, seed=1)
        rows["teacher, fitted schedule (DPM-Solver++(2M))"] = {
            n: fid(teacher, args, real, extractor, timesteps=schedules[n]) for n in fitted_nfe
        }
        print(f"fitted: {rows['teacher, fitted schedule (DPM-Solver++(2M))']}", flush=True)
    students = [load_pipeline(path) for path in args.students]
    for i, (path, student) in enumerate(zip(args.students, students)):
        student.set_progress_bar_config(disable=True)
        nfe = [n for n in args.nfe if n <= student.scheduler.config.original_inference_steps]
        rows[f"student {i} ({os.path.basename(os.path.normpath(path))})"] = {
            n: fid(student, args, real, extractor, num_inference_steps=n) for n in nfe
        }
        print(f"student {i}: {rows[f'student {i} ({os.path.basename(os.path.normpath(path))})']}", flush=True)
    timings = {}
    if students:
        teacher.scheduler = DDIMScheduler.from_config(base, **TRAILING)
        timings["teacher DDIM-50"] = seconds_per_image(teacher, args.timing_batch, 50)
        for n in (1, 2, 4):
            timings[f"student {n} NFE"] = seconds_per_image(students[0], args.timing_batch, n)
    return rows, {"reference_ddim50": reference, "timings": timings}


def seconds_per_image(pipe, batch: int, steps: int) -> float:
    pipe(batch_size=2, num_inference_steps=min(steps, 2), output_type="pt")  # warm-up
    start = time.perf_counter()
    pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt")
    return (time.perf_counter() - start) / batch


def class_accuracy(pipe, extractor, args, w: float, steps: int) -> float:
    images, labels = [], []
    for batch_images, batch_labels in sample_images(
        pipe, 10 * args.samples_per_class, 250, 0, class_labels=range(10), guidance_scale=w, num_inference_steps=steps
    ):
        images.append(batch_images)
        labels.append(batch_labels)
    _, logits = extractor.features_and_logits(torch.cat(images))
    return float((logits.argmax(dim=-1) == torch.cat(labels)).float().mean())


def class_rows(args) -> dict[str, dict[str, float]]:
    extractor = DigitsFeatureExtractor(load_digits_classifier())
    teacher = load_pipeline(args.class_teacher)
    teacher.set_progress_bar_config(disable=True)
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config, **TRAILING)
    rows = {"teacher CFG, DDIM-50": {f"w={w:g}": class_accuracy(teacher, extractor, args, w, 50) for w in (1.0, 2.0)}}
    for i, path in enumerate(args.class_students):
        student = load_pipeline(path)
        student.set_progress_bar_config(disable=True)
        for n in (1, 2, 4):
            rows[f"student {i}, {n} NFE"] = {
                f"w={w:g}": class_accuracy(student, extractor, args, w, n) for w in (1.0, 2.0)
            }
        print(rows, flush=True)
    return rows


def write_results(args, rows, extra, classes) -> None:
    os.makedirs(args.results_dir, exist_ok=True)
    reference = extra.get("reference_ddim50")
    nfe = args.nfe
    lines = [
        f"# Consistency distillation: digits-FID vs NFE ({args.num_samples} samples, seed 0) of `{args.teacher}`",
        "",
        f"Teacher DDIM-50 FID (the reference): {reference:.2f}" if reference else "",
        "",
        "| sampler | " + " | ".join(f"NFE {n}" for n in nfe) + " |",
        "|---" * (len(nfe) + 1) + "|",
    ]
    for name, row in rows.items():
        cells = " | ".join(f"{row[n]:.2f} ({row[n] / reference:.2f}×)" if n in row else "–" for n in nfe)
        lines.append(f"| {name} | {cells} |")
    student_rows = [row for name, row in rows.items() if name.startswith("student")]
    if len(student_rows) >= 2:
        cells = []
        for n in nfe:
            values = [row[n] for row in student_rows if n in row]
            cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else "–")
        lines.append(f"| students, mean ± sd over {len(student_rows)} seeds | " + " | ".join(cells) + " |")
    if extra.get("timings"):
        lines += ["", "Wall time per image (same process, one after the other; shared busy CPU):", ""]
        lines += [f"- {name}: {seconds * 1000:.2f} ms" for name, seconds in extra["timings"].items()]
    if classes:
        lines += [
            "",
            "## Class-conditional: digits-classifier accuracy",
            "",
            "| sampler | w=1 | w=2 |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {row['w=1']:.3f} | {row['w=2']:.3f} |" for name, row in classes.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(args.results_dir, "distill_quality.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(args.results_dir, "distill_quality.json"), "w", encoding="utf-8") as f:
        json.dump({"fid": rows, **extra, "class_accuracy": classes}, f, indent=2)
    plot(rows, reference, os.path.join(args.results_dir, "distill_quality.png"))


def plot(rows, reference, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, row in rows.items():
        points = sorted((n, v) for n, v in row.items() if n != 50)
        style = "o-" if name.startswith("student") else "s--"
        ax.plot([n for n, _ in points], [v for _, v in points], style, label=name)
    if reference:
        ax.axhline(reference, color="k", lw=0.8, ls=":", label=f"teacher DDIM-50 ({reference:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("digits-FID (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    rows, extra = unconditional_rows(args)
    classes = class_rows(args) if args.class_teacher else {}
    write_results(args, rows, extra, classes)


if __name__ == "__main__":
    main()
