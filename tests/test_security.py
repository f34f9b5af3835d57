"""Nothing unpickles untrusted data: no unsafe loader call anywhere in the package, the scripts or the benchmarks,
remote code is never allowed by default, and a checkpoint with a booby-trapped pickle cannot run code on resume."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("custom_pipelines", "training", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_no_unsafe_loader_call_in_the_code():
    offenders = []
    for path in SOURCES:
        for node, func, kwargs in _calls(path):
            where = f"{path.relative_to(ROOT)}:{node.lineno} {func}"
            if func.endswith("torch.load") and not _is_true(kwargs.get("weights_only")):
                offenders.append(where + " (torch.load without weights_only=True)")
            if func in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                offenders.append(where)
            if func.endswith(("np.load", "numpy.load")) and _is_true(kwargs.get("allow_pickle")):
                offenders.append(where + " (allow_pickle=True)")
            if func.endswith("register_for_checkpointing"):  # accelerate loads those with weights_only=False
                offenders.append(where + " (accelerate custom checkpoint = pickle)")
    assert not offenders, offenders


def test_remote_code_is_never_trusted_by_default():
    """No `trust_remote_code=True` passed or defaulted anywhere: the user must say it."""
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and _is_true(node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.value.lineno}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code" and _is_true(default):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} def {node.name}")
    assert not offenders, offenders


class _Trap:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_booby_trapped_checkpoint_pickle_cannot_run_code(tmp_path, monkeypatch):
    """accelerate keeps optimizer / lr-schedule / RNG state as pickles; we resume them with torch's weights-only
    unpickler, so a planted object that would run a command on load raises instead of running."""
    from accelerate.state import AcceleratorState, GradientState

    from tests.training.test_train_ddpm import tiny_args
    from training import train_ddpm

    out = tmp_path / "run"
    train_ddpm.main(train_ddpm.parse_args(tiny_args(out, "--max_train_steps", "3")))
    checkpoint = out / "checkpoint-3"
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # our extra state is JSON, not pickle
    with open(checkpoint / "optimizer.bin", "wb") as f:
        pickle.dump({"state": _Trap()}, f)
    monkeypatch.chdir(tmp_path)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_ddpm.main(train_ddpm.parse_args(tiny_args(out, "--resume_from_checkpoint", "latest")))
    assert not (tmp_path / "PWNED").exists()
