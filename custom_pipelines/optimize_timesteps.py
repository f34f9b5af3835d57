"""`python -m custom_pipelines.optimize_timesteps`: few-step timestep schedules fitted to a saved diffusion pipeline.

Example (prints the schedules and writes them to JSON; sample with `pipe(timesteps=...)`,
`python training/sample.py --timesteps ...` or `python -m custom_pipelines.evaluate --timesteps ...`):
    python -m custom_pipelines.optimize_timesteps --pipeline runs/ddpm-digits --num_inference_steps 6 8 10 \
        --output runs/ddpm-digits/optimized_timesteps.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import types

from custom_pipelines.cli import add_fast_sampling_args, console_entry, default_device, parse_class_labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m custom_pipelines.optimize_timesteps", allow_abbrev=False, description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pipeline", required=True, help="pipeline folder or Hub repo id (load_pipeline)")
    parser.add_argument("--num_inference_steps", type=int, nargs="+", required=True, help="step counts K")
    parser.add_argument("--num_samples", type=int, default=256, help="teacher trajectories")
    parser.add_argument("--grid_size", type=int, default=200, help="candidate timesteps (teacher steps)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="teacher noise seed (keep apart from evaluation seeds)")
    parser.add_argument("--guidance_scale", type=float, default=None, help="class-conditional pipelines: CFG w")
    parser.add_argument("--class_labels", default=None, help="'all' (cycled 0..num_classes-1) or e.g. '3,5'")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_fast_sampling_args(parser)
    parser.add_argument("--output", default=None, help="write {K: timesteps} and the settings to this JSON file")
    args = parser.parse_args(argv)
    # checked before any pipeline is loaded; console_entry turns the ValueError into one line
    for name in ("num_samples", "grid_size", "batch_size", "num_classes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(k < 1 for k in args.num_inference_steps):
        raise ValueError(f"--num_inference_steps must all be >= 1, got {args.num_inference_steps}")
    if args.guidance_scale is not None and not args.guidance_scale >= 0:
        raise ValueError(f"--guidance_scale must be >= 0, got {args.guidance_scale}")
    return args


def run(args: argparse.Namespace) -> dict:
    from custom_pipelines.hub.loader import load_pipeline
    from custom_pipelines.io import write_json
    from custom_pipelines.pipelines.fast_sampling import apply_fast_sampling_args
    from custom_pipelines.pipelines.timestep_search import optimize_timesteps

    pipe = load_pipeline(args.pipeline).to(default_device(args.device))
    apply_fast_sampling_args(pipe, args)
    extra = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
    schedules = optimize_timesteps(
        pipe,
        args.num_inference_steps,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        grid_size=args.grid_size,
        seed=args.seed,
        class_labels=parse_class_labels(args.class_labels, args.num_classes),
        **extra,
    )
    result = {
        "pipeline": args.pipeline,
        "method": "GITS (Chen et al. 2024): DP over first-order jump errors on a DPM-Solver++(2M) teacher",
        "num_samples": args.num_samples,
        "grid_size": args.grid_size,
        "seed": args.seed,
        "timesteps": {str(k): v for k, v in schedules.items()},
    }
    for k, timesteps in schedules.items():
        print(f"{k:3d} steps: {' '.join(map(str, timesteps))}")
    if args.output is not None:
        write_json(args.output, result)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(parse_args(argv))
    return 0


cli = console_entry(main)  # a user error prints one line and exits 1


class _CommandAndFunction(types.ModuleType):
    """`custom_pipelines.optimize_timesteps` names both this command's module and the public function
    (`custom_pipelines.pipelines.timestep_search.optimize_timesteps`). Once anything imports the module (the
    console script, a test of its parser), Python binds the package attribute to the module, and
    `from custom_pipelines import optimize_timesteps` would give a module that cannot be called: calling this
    module calls the function, so both spellings keep working."""

    def __call__(self, *args, **kwargs):
        from custom_pipelines.pipelines.timestep_search import optimize_timesteps

        return optimize_timesteps(*args, **kwargs)


sys.modules[__name__].__class__ = _CommandAndFunction


if __name__ == "__main__":
    cli()
