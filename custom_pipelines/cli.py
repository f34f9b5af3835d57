"""What every command line of the package shares: the sampling flags, custom timesteps, and one-line errors.

Importing this module costs no torch: parsers are built and checked (`--help`, bad flags) before anything heavy
is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from .options import SAMPLING_DTYPE_CHOICES


class CommandFailed(RuntimeError):
    """A command could not finish, for a reason its message explains in full, with what to do next (e.g. a Hub push
    that failed after training saved the model): printed as one line, like a user error."""


# what a command line reports as `error: <message>` (bad input, missing files), not as a stack trace
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, CommandFailed)


def run_cli(main: Callable[[], object]) -> None:
    """Run `main()` and exit; a user error prints one `error: ...` line and exits with status 1."""
    try:
        result = main()
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
    sys.exit(result if isinstance(result, int) else 0)


def console_entry(main: Callable[[], object]) -> Callable[[], None]:
    """A script's console entry point (`[project.scripts]`, `if __name__ == "__main__"`): `run_cli(main)`."""

    def entry() -> None:
        run_cli(main)

    return entry


def add_fast_sampling_args(parser: argparse.ArgumentParser) -> None:
    """`--torch_dtype` and `--compile`, applied by `pipelines.fast_sampling.apply_fast_sampling_args`."""
    parser.add_argument(
        "--torch_dtype",
        default="auto",
        choices=SAMPLING_DTYPE_CHOICES,
        help="dtype of the networks (scheduler state stays fp32); auto: bf16 where the device runs it natively "
        "(CUDA ≥ sm80, CPUs with AVX-512-BF16/AMX), else fp32",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (first batch compiles)")


def add_timesteps_args(parser: argparse.ArgumentParser) -> None:
    """`--timesteps t_1 ... t_K`, or `--timesteps_file`: the JSON that `optimize_timesteps` writes."""
    parser.add_argument("--timesteps", type=int, nargs="+", default=None, help="custom schedule (optimize_timesteps)")
    parser.add_argument(
        "--timesteps_file",
        default=None,
        help="JSON from `python -m custom_pipelines.optimize_timesteps`; the entry for --num_inference_steps",
    )


def resolve_timesteps_args(args: argparse.Namespace) -> None:
    """Fill `args.timesteps` from `--timesteps_file` (after checking the two are not both given)."""
    if args.timesteps_file is None:
        return
    if args.timesteps is not None:
        raise ValueError("pass --timesteps or --timesteps_file, not both")
    args.timesteps = timesteps_from_file(args.timesteps_file, args.num_inference_steps)


def timesteps_from_file(path: str, num_inference_steps: int | None) -> list[int]:
    """The schedule for `num_inference_steps` in an optimize_timesteps JSON (the only one, if it holds one)."""
    if not os.path.isfile(path):
        raise ValueError(
            f"--timesteps_file {path} does not exist (write it with python -m custom_pipelines.optimize_timesteps)"
        )
    with open(path, encoding="utf-8") as f:
        table = json.load(f).get("timesteps", {})
    if num_inference_steps is None and len(table) == 1:
        return list(table.values())[0]
    if str(num_inference_steps) not in table:
        raise ValueError(
            f"--timesteps_file {path} has schedules for num_inference_steps {sorted(table, key=int)}; "
            f"pass one of them as --num_inference_steps (got {num_inference_steps})"
        )
    return table[str(num_inference_steps)]


def parse_class_labels(value: str | None, num_classes: int) -> list[int] | None:
    """`"all"` → 0..num_classes-1 (cycled, so balanced); `"3,5"` → [3, 5]; `None`/`"none"` → unconditional."""
    if value is None or value == "none":
        return None
    if value == "all":
        return list(range(num_classes))
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"--class_labels must be 'all', 'none' or comma-separated ints, got {value!r}") from None


def default_device(device: str | None) -> str:
    """`--device`, or cuda when available, else cpu (torch is imported only here, after parsing)."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")
