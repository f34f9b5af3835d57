"""Layers point one way: schedulers → models → pipelines → evaluation → CLIs → training. The pipelines layer may
not import from the layers above it (read with `ast`, so lazy imports inside functions count too)."""

import ast
import importlib.util
from pathlib import Path

import custom_pipelines
from custom_pipelines.evaluation import evaluator, features
from custom_pipelines.pipelines import utils

PIPELINES_DIR = Path(custom_pipelines.__file__).parent / "pipelines"
HIGHER_LAYERS = (
    "custom_pipelines.evaluation",
    "custom_pipelines.evaluate",
    "custom_pipelines.optimize_timesteps",
    "custom_pipelines.cli",
    "custom_pipelines.training",
    "training",
)


def imported_modules(path: Path) -> list[str]:
    """Absolute names of every module a file of the pipelines package imports (relative imports resolved)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), "custom_pipelines.pipelines")
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_resolver_sees_relative_and_lazy_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..evaluation.evaluator import sample_images\n")
    assert "custom_pipelines.evaluation.evaluator" in imported_modules(source)


def test_pipelines_import_nothing_from_higher_layers():
    files = sorted(PIPELINES_DIR.glob("*.py"))
    assert len(files) >= 8
    offenders = {
        f"{path.name}: {name}"
        for path in files
        for name in imported_modules(path)
        if any(name == layer or name.startswith(layer + ".") for layer in HIGHER_LAYERS)
    }
    assert not offenders, f"the pipelines layer imports from layers above it: {sorted(offenders)}"


def test_evaluation_uses_the_pipelines_helpers_not_copies():
    assert evaluator.sample_images is utils.sample_images
    assert features.resize is utils.resize and features.to_grayscale is utils.to_grayscale
