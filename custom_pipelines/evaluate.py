"""`python -m custom_pipelines.evaluate ...`: the evaluation command line (see `custom_pipelines.evaluation.cli`)."""

from custom_pipelines.cli import run_cli
from custom_pipelines.evaluation.cli import main

if __name__ == "__main__":
    run_cli(main)
