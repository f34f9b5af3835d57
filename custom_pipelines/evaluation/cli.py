"""`python -m custom_pipelines.evaluate`: sample a saved pipeline and write FID / KID / precision / recall to JSON.

Every pipeline type is sampled as `sample` samples it (`custom_pipelines.call_inputs`): class-conditional models
with balanced labels over all their classes unless `--class_labels` says otherwise, text models with `--prompt`
(cycled), and pipelines that take an input image (super-resolution, CycleGAN, img2img with any diffusion pipeline)
on the images of `--image`: one output per input by default, and their outputs are scored against `--reference`
(for CycleGAN: real images of the target domain; for super-resolution: real high-resolution images).

Example:
    python -m custom_pipelines.evaluate --pipeline runs/ddpm-digits --num_samples 2000 \
        --reference digits --feature_extractor digits --num_inference_steps 50 --output metrics.json
"""

from __future__ import annotations

import argparse
import math

from custom_pipelines.call_inputs import add_conditioning_args, check_conditioning_args
from custom_pipelines.cli import (
    add_fast_sampling_args,
    add_timesteps_args,
    console_entry,
    default_device,
    resolve_timesteps_args,
)
from custom_pipelines.options import SCHEDULER_NAMES

DEFAULT_NUM_SAMPLES = 1000  # pipelines without input images; those make one sample per input by default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m custom_pipelines.evaluate", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    parser.add_argument("--pipeline", required=True, help="pipeline folder or Hub repo id (load_pipeline)")
    parser.add_argument(
        "--num_samples",
        type=int,
        default=None,
        help=f"generated images (50000 for papers); default {DEFAULT_NUM_SAMPLES}, or one per --image input",
    )
    parser.add_argument("--reference", default="digits", help="'digits' or a folder of real images")
    parser.add_argument("--reference_split", default="all", choices=["all", "train", "test"], help="digits split")
    parser.add_argument("--reference_num_samples", type=int, default=None, help="use the first N real images")
    parser.add_argument("--feature_extractor", default="digits", choices=["digits", "inception"])
    parser.add_argument("--inception_weights", default=None, help=".safetensors file, folder or Hub repo id")
    parser.add_argument("--inception_filename", default=None, help=".safetensors file inside the Hub repo")
    parser.add_argument("--digits_cache_dir", default=None, help="where the digits classifier is cached")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="sampler steps (pipeline default)")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None, help="swap in one of our samplers")
    add_timesteps_args(parser)
    parser.add_argument("--guidance_scale", type=float, default=None, help="for guided pipelines")
    add_fast_sampling_args(parser)
    add_conditioning_args(parser)
    parser.add_argument(
        "--num_classes", type=int, default=None, help="classes cycled by --class_labels all (default: the model's)"
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kid_subsets", type=int, default=100)
    parser.add_argument("--kid_subset_size", type=int, default=1000)
    parser.add_argument("--pr_k", type=int, default=3, help="k of the k-NN manifolds for precision/recall")
    parser.add_argument("--fid_method", default="sqrtm", choices=["sqrtm", "eigh"])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    resolve_timesteps_args(args)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """A ValueError naming the flag for every bad count or scale, before the pipeline is loaded or sampled."""
    for name in ("batch_size", "kid_subsets", "pr_k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("num_samples", "num_classes", "num_inference_steps", "reference_num_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer (or left out), got {getattr(args, name)}")
    if args.kid_subset_size < 2:
        raise ValueError(
            f"--kid_subset_size must be >= 2 (KID's unbiased MMD² compares pairs), got {args.kid_subset_size}"
        )
    if args.guidance_scale is not None and not 0 <= args.guidance_scale < math.inf:
        raise ValueError(f"--guidance_scale must be >= 0 and finite, got {args.guidance_scale}")
    check_conditioning_args(args)


def run(args: argparse.Namespace) -> dict:
    """Load the pipeline, evaluate it, print a table and write the JSON; returns the metrics dict."""
    import functools

    from custom_pipelines.call_inputs import plan_sampling, prepare_pipeline, sample_batches
    from custom_pipelines.evaluation.evaluator import build_feature_extractor, evaluate_pipeline
    from custom_pipelines.hub.loader import load_pipeline
    from custom_pipelines.io import write_json
    from custom_pipelines.pipelines.fast_sampling import apply_fast_sampling_args

    args.device = default_device(args.device)
    pipe = prepare_pipeline(load_pipeline(args.pipeline).to(args.device), args)
    dtype = apply_fast_sampling_args(pipe, args)
    pipe.set_progress_bar_config(disable=True)
    plan = plan_sampling(pipe, args, args.num_samples, DEFAULT_NUM_SAMPLES, "num_samples")
    for note in plan.notes:
        print(f"note: {note}")
    extractor = args.feature_extractor
    if extractor == "inception":
        extractor = build_feature_extractor(
            "inception",
            inception_weights=args.inception_weights,
            inception_filename=args.inception_filename,
            device=args.device,
        )
    metrics = evaluate_pipeline(
        pipe,
        plan.num_samples,
        reference=args.reference,
        extractor=extractor,
        batch_size=args.batch_size,
        seed=args.seed,
        sampler=functools.partial(sample_batches, plan=plan),
        reference_num_samples=args.reference_num_samples,
        reference_split=args.reference_split,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        pr_k=args.pr_k,
        fid_method=args.fid_method,
        digits_cache_dir=args.digits_cache_dir,
    )
    metrics = {**metrics, "pipeline": args.pipeline, "pipeline_class": type(pipe).__name__}
    metrics["num_inference_steps"] = args.num_inference_steps
    if plan.class_labels is not None:
        metrics["class_labels"] = ",".join(map(str, plan.class_labels))  # cycled over the samples
    for name in ("prompt", "image", "strength", "direction"):
        if getattr(args, name) is not None:
            metrics[name] = getattr(args, name)
    scheduler = pipe.components.get("scheduler")  # GAN pipelines have none
    metrics["scheduler"] = type(scheduler).__name__ if scheduler is not None else None
    metrics["torch_dtype"] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[str(dtype).split(".")[-1]]
    metrics["compile"] = args.compile
    if args.timesteps is not None:
        metrics["timesteps"] = " ".join(map(str, args.timesteps))
    print(format_table(metrics))
    if args.output is not None:
        write_json(args.output, metrics)
    return metrics


def format_table(metrics: dict) -> str:
    """Two aligned columns, floats with 5 significant digits."""
    width = max(len(k) for k in metrics)
    rows = []
    for key, value in metrics.items():
        text = f"{value:.5g}" if isinstance(value, float) and math.isfinite(value) else str(value)
        rows.append(f"{key:<{width}}  {text}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


cli = console_entry(main)  # a user error prints one line and exits 1


if __name__ == "__main__":
    cli()
