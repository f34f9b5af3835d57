"""The wheel: what `pip install .` (not editable) ships, and that an installed user can train and sample."""

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MAPPED = PYPROJECT["tool"]["setuptools"]["package-dir"]  # wheel package -> clone folder


def clone_folder(package: str) -> Path:
    return REPO / MAPPED.get(package, package.replace(".", "/"))


def test_package_list_covers_every_folder_and_nothing_generic():
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    library = sorted(
        ".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "custom_pipelines").rglob("__init__.py")
    )
    assert sorted(set(packages) - set(MAPPED)) == library
    assert all(p == "custom_pipelines" or p.startswith("custom_pipelines.") for p in packages)
    assert MAPPED == {"custom_pipelines.scripts": "training", "custom_pipelines.hub_configs": "hub_configs"}


def test_package_data_globs_cover_every_variant_file():
    from fnmatch import fnmatch

    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["custom_pipelines.hub_configs"]
    files = [p.relative_to(REPO / "hub_configs").as_posix() for p in (REPO / "hub_configs").rglob("*") if p.is_file()]
    assert files and all(any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs) for f in files), files


def test_scripts_import_only_the_library():
    """`training/*.py` install as `custom_pipelines.scripts`: they may not import `training.` (absent there)."""
    for path in (REPO / "training").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "training" or n.startswith("training.") for n in names), (path.name, names)


def test_console_entry_points_resolve():
    import importlib

    for name, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_every_training_script_has_a_console_command():
    """training/train_<x>.py is `custom-pipelines-train-<x>` once installed."""
    scripts = PYPROJECT["project"]["scripts"]
    for path in sorted((REPO / "training").glob("train_*.py")):
        name = "custom-pipelines-" + path.stem.replace("_", "-")
        assert scripts.get(name) == f"custom_pipelines.scripts.{path.stem}:cli", name


def run(cmd, cwd, env=None):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_wheel_installs_and_trains_from_outside_the_repo(tmp_path):
    wheel_dir = tmp_path / "wheel"
    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheel_dir)], cwd=tmp_path)
    (wheel,) = wheel_dir.glob("custom_pipelines-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "custom_pipelines/hub_configs/ddpm-digits-16/unet/config.json" in names
    assert "custom_pipelines/scripts/train_ddpm.py" in names
    assert {n.split("/")[0] for n in names} == {"custom_pipelines", wheel.name.split("-py3")[0] + ".dist-info"}

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    constraints = REPO / "constraints.txt"
    # --no-compile: byte-compiling every installed module made the installs 95 s instead of 38 s; the runs below
    # compile only the modules they import (≈ 20 s more), so the test takes ≈ 85 s instead of 120 s
    run([py, "-m", "pip", "install", "-q", "--no-compile", "-c", constraints, "torch==2.13.0"], cwd=tmp_path)
    run([py, "-m", "pip", "install", "-q", "--no-compile", "-c", constraints, f"{wheel}[train]"], cwd=tmp_path)

    work = tmp_path / "elsewhere"  # no clone on sys.path: everything comes from the installed wheel
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    probe = (
        "import json, custom_pipelines, custom_pipelines.hub.configs as c;"
        "print(json.dumps([custom_pipelines.__file__, c.list_variants()]))"
    )
    location, variants = json.loads(run([py, "-c", probe], cwd=work, env=env))
    assert str(venv) in location and {"ddpm-digits-16", "ddpm-tiny-8", "dcgan-digits-16"} <= set(variants)

    out = work / "run"
    run(
        [
            bin_dir / "custom-pipelines-train-ddpm", "--model_config", "ddpm-tiny-8", "--dataset_name", "digits",
            "--resolution", "8", "--output_dir", out, "--train_batch_size", "8", "--max_train_samples", "32",
            "--max_train_steps", "3", "--validation_steps", "3", "--num_validation_images", "4",
            "--num_inference_steps", "2", "--checkpointing_steps", "3", "--lr_warmup_steps", "0",
        ],
        cwd=work,
        env=env,
    )  # fmt: skip
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "custom-pipelines-train-ddpm" in card or "train_ddpm" in card
    run([bin_dir / "custom-pipelines-sample", "--pipeline", out, "--num_images", "4", "--num_inference_steps", "2",
         "--output", out / "grid.png"], cwd=work, env=env)  # fmt: skip
    assert (out / "grid.png").stat().st_size > 0
    # the same script through `python -m`, as `accelerate launch -m custom_pipelines.scripts.train_ddpm` runs it
    help_text = run([py, "-m", "custom_pipelines.scripts.train_ddpm", "--help"], cwd=work, env=env)
    assert "--model_config" in help_text
