"""A user's scheduler swap, measured: every diffusers scheduler for ε-prediction put into our pixel pipeline with a
plain `from_config(pipe.scheduler.config)` (no overrides), digits-FID of its samples against the default's.

    python benchmarks/scheduler_swap_fid.py --pipeline runs/ddpm-digits --num_samples 500

The unit test (tests/pipelines/test_scheduler_swap.py) proves each swap samples the data with an exact denoiser;
this checks the same on a trained model: every FID finite and near the default scheduler's, none of them noise.
"""

from __future__ import annotations

import argparse
import os
import platform

import diffusers
import torch

from custom_pipelines import enable_fast_sampling, load_pipeline
from custom_pipelines.evaluation import build_feature_extractor, evaluate_pipeline, reference_features
from custom_pipelines.io import write_json
from custom_pipelines.precision import cpu_capability

SCHEDULERS = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
]  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", default="runs/ddpm-digits")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--output", default="benchmarks/results/scheduler_swap_fid.json")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.pipeline)
    enable_fast_sampling(pipe)  # auto precision
    pipe.set_progress_bar_config(disable=True)
    default = pipe.scheduler
    size = pipe.unet.config.sample_size
    extractor = build_feature_extractor("digits", size)
    real = reference_features("digits", extractor, size)
    print(f"{platform.processor() or platform.machine()}, {cpu_capability()}, UNet {pipe.unet.dtype}")
    rows = {}
    for name in [f"default ({type(default).__name__})", *SCHEDULERS]:
        pipe.scheduler = (
            default if name.startswith("default") else getattr(diffusers, name).from_config(default.config)
        )
        metrics = evaluate_pipeline(
            pipe, args.num_samples, real, extractor, seed=0, num_inference_steps=args.num_inference_steps
        )
        rows[name] = metrics["fid"]
        print(f"| {name} | {metrics['fid']:.3f} |", flush=True)
    pipe.scheduler = default
    result = {"pipeline": args.pipeline, "num_inference_steps": args.num_inference_steps, "fid": rows}
    result["machine"] = cpu_capability()
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
