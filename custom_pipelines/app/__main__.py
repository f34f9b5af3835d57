"""python -m custom_pipelines.app --pipeline DIR_OR_REPO_ID [--host 127.0.0.1 --port 7860]
python -m custom_pipelines.app --export_space OUT --pipeline REPO_ID

Serves the web app of a saved pipeline (any type we ship), or writes a Hugging Face Space folder that serves it.
Binds 127.0.0.1 unless --host says otherwise (0.0.0.0 exposes the app to the network). Limits per request are flags
and are shown in the page.
"""

from __future__ import annotations

import argparse

from ..cli import console_entry
from .limits import add_limit_args, limits_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m custom_pipelines.app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--pipeline", required=True, help="a saved pipeline folder or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--default_steps", type=int, default=None, help="the steps the page starts with (default 25; 4 for a student)"
    )
    parser.add_argument("--export_space", default=None, metavar="OUT", help="write a Space folder instead of serving")
    parser.add_argument(
        "--space_requirement",
        default=None,
        help="with --export_space: the pip line that installs this package on the Space (default: from PyPI)",
    )
    add_limit_args(parser)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    if args.default_steps is not None and args.default_steps < 1:
        raise ValueError(f"--default_steps must be a positive integer, got {args.default_steps}")
    args.limits = limits_from_args(args)  # ValueError naming the flag
    return args


def main(args: argparse.Namespace):
    if args.export_space is not None:
        from .space import export_space

        out = export_space(args.export_space, args.pipeline, args.limits, args.space_requirement)
        print(f"Space folder for {args.pipeline}: {out} (app.py, requirements.txt, README.md)")
        return out
    from .ui import launch_app

    return launch_app(args.pipeline, args.host, args.port, args.limits, args.default_steps)


cli = console_entry(lambda: main(parse_args()))

if __name__ == "__main__":
    cli()
