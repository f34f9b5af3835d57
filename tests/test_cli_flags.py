"""No command takes a shortened flag: argparse's default would read `--learning_rat 1` as `--learning_rate 1`, and a
typo of one flag could silently become another."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ["--dataset_name", "digits", "--output_dir", "unused", "--max_train_steps", "1"]
COMMANDS = {  # module → (a complete argv, one flag shortened)
    **{f"training.{p.stem}": (TRAINING, ["--learning_rat", "1e-3"]) for p in (ROOT / "training").glob("train_*.py")},
    "training.sample": (["--pipeline", "p", "--output", "o.png"], ["--num_imag", "3"]),
    "custom_pipelines.evaluation.cli": (["--pipeline", "p"], ["--num_sampl", "5"]),
    "custom_pipelines.optimize_timesteps": (["--pipeline", "p", "--num_inference_steps", "8"], ["--grid_siz", "10"]),
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_shortened_flags_are_refused(module, capsys):
    argv, shortened = COMMANDS[module]
    parse = importlib.import_module(module).parse_args
    with pytest.raises(SystemExit) as err:
        parse([*argv, *shortened])
    assert err.value.code == 2
    assert f"unrecognized arguments: {shortened[0]}" in capsys.readouterr().err


def test_the_hub_push_command_refuses_shortened_flags(capsys):
    from custom_pipelines.hub.push import main

    with pytest.raises(SystemExit):
        main(["folder", "user/repo", "--priv"])
    assert "unrecognized arguments: --priv" in capsys.readouterr().err


def test_every_parser_in_the_repo_is_built_without_abbreviations():
    files = [*ROOT.glob("custom_pipelines/**/*.py"), *ROOT.glob("training/*.py"), *ROOT.glob("benchmarks/*.py")]
    calls = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"ArgumentParser\((.*?)\)\n", text, flags=re.S):
            calls.append((path.relative_to(ROOT).as_posix(), "allow_abbrev=False" in match.group(1)))
    assert len(calls) >= 25
    assert [where for where, ok in calls if not ok] == []


def test_the_optimize_timesteps_function_survives_an_import_of_its_command_module(monkeypatch):
    import custom_pipelines
    import custom_pipelines.optimize_timesteps  # noqa: F401  (binds the package attribute to the module)
    import custom_pipelines.pipelines.timestep_search as search

    calls = []
    monkeypatch.setattr(search, "optimize_timesteps", lambda *a, **k: calls.append((a, k)) or [999, 500])
    from custom_pipelines import optimize_timesteps

    assert optimize_timesteps("pipe", 2, num_samples=4) == [999, 500]
    assert calls == [(("pipe", 2), {"num_samples": 4})]
    assert custom_pipelines.optimize_timesteps("pipe", 2) == [999, 500]
