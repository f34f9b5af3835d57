"""`--help` and flag errors answer before torch, diffusers or accelerate are imported (they cost ~10 s cold)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIS = [
    *([f"training/{p.name}"] for p in sorted((ROOT / "training").glob("*.py")) if p.stem != "__init__"),
    ["-m", "training.sample"],
    ["-m", "custom_pipelines.evaluate"],
    ["-m", "custom_pipelines.optimize_timesteps"],
    ["-m", "custom_pipelines.app"],
]
HEAVY = ("torch", "diffusers", "accelerate", "datasets", "transformers")
PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_{kind}({target!r}, run_name="__main__")
except SystemExit as err:
    if isinstance(err.code, str):  # what the interpreter would print for an uncaught sys.exit("error: ...")
        print(err.code, file=sys.stderr)
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""


def run_probe(cli: list[str], *args: str) -> subprocess.CompletedProcess:
    kind, target = ("module", cli[1]) if cli[0] == "-m" else ("path", cli[0])
    code = PROBE.format(argv=[target, *args], kind=kind, target=target, heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cli", CLIS, ids=" ".join)
def test_help_imports_nothing_heavy(cli):
    result = run_probe(cli, "--help")
    assert "usage:" in result.stdout
    assert result.stdout.strip().endswith("HEAVY:"), result.stdout[-300:] + result.stderr[-2000:]


def test_a_flag_error_is_one_line_and_light():
    result = run_probe(["training/train_ddpm.py"], "--dataset_name", "digits", "--output_dir", "x")
    assert result.stdout.strip().endswith("HEAVY:")
    assert "error: give --max_train_steps or --num_epochs" in result.stderr and "Traceback" not in result.stderr
