"""Every shell command in README.md and docs/ parses with its script's own parser: the flags exist, the required
ones are given, the values pass the scripts' checks (`python -c` code must compile). Commands with a `...`
placeholder are skipped; files a command reads that an earlier documented command writes (a run folder, a
timesteps JSON) may be missing."""

from __future__ import annotations

import importlib
import os
import re
import shlex
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = sorted(p.stem for p in (ROOT / "training").glob("*.py") if p.stem != "__init__")
PARSERS = {  # how a command names its entry point → the module whose parse_args(argv) checks it
    **{f"training/{s}.py": f"training.{s}" for s in SCRIPTS},
    **{f"training.{s}": f"training.{s}" for s in SCRIPTS},
    "custom_pipelines.evaluate": "custom_pipelines.evaluation.cli",
    "custom_pipelines.optimize_timesteps": "custom_pipelines.optimize_timesteps",
    "custom_pipelines.hub.push": "custom_pipelines.hub.push",
    "tests.hub.hub_server": "tests.hub.hub_server",  # the local Hub of docs/hub.md
    "custom_pipelines.app": "custom_pipelines.app.__main__",  # the web app of docs/app.md
    "custom_pipelines.lora.grid": "custom_pipelines.lora.grid",  # the LoRA grid of make demo-lora
    # an installed wheel's names for the same scripts
    **{f"custom_pipelines.scripts.{s}": f"training.{s}" for s in SCRIPTS},
}
# console commands (pyproject [project.scripts]) → the module of their entry point
CONSOLE = {
    name: target.split(":")[0].replace("custom_pipelines.scripts.", "training.")
    for name, target in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].items()
}
PREFIXES = ("python ", "python3 ", "accelerate launch ", "make ", "custom-pipelines-")
PREFIXES += ("ACCELERATE_USE_CPU=", "OMP_NUM_THREADS=")
# errors about inputs that an earlier command of the same doc produces, not about the command line itself
LATER_FILES = ("does not exist", "neither a local pipeline folder")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every command in a ```bash block or an inline `code span` that starts like one."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if line.startswith(PREFIXES):
                    found.append((path.name, line))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`]+)`", prose):
            span = " ".join(span.split())
            # a span that names an entry point and gives it flags is a command; a bare name is a mention
            names_entry = re.search(r"(\.py|-m [\w.]+) +-", span)
            if names_entry and (span.startswith(PREFIXES) or span.startswith("training/train_")):
                found.append((path.name, span))
    return [(where, cmd) for where, cmd in found if "..." not in cmd and "…" not in cmd]


def entry_point(command: str) -> tuple[str | None, list[str]]:
    """(entry point, its argv) of a shell command; None for commands that name no Python entry of ours."""
    tokens = [t for t in shlex.split(command.replace("\\|", "|")) if not re.match(r"^[A-Z_]+=", t)]
    if tokens[-1] == "&":  # started in the background
        tokens = tokens[:-1]
    if tokens[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(tokens[2:])  # accelerate's own flags must be right too
        return launch.training_script, launch.training_script_args
    if tokens[0] in ("python", "python3"):
        if tokens[1] == "-m":
            return tokens[2], tokens[3:]
        return tokens[1], tokens[2:]
    if tokens[0].startswith("training/") or tokens[0] in CONSOLE:
        return tokens[0], tokens[1:]
    return None, tokens


COMMANDS = documented_commands()


def test_the_docs_have_commands_to_check():
    entries = {entry_point(cmd)[0] for _, cmd in COMMANDS}
    assert {"training/train_ddpm.py", "training/train_gan.py", "custom_pipelines.evaluate"} <= entries


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_parses(where, command):
    script, argv = entry_point(command)
    if script is None:  # make targets must exist
        assert argv[0] == "make", f"{where}: unrecognised command {command!r}"
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        for target in [a for a in argv[1:] if "=" not in a]:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{where}: no make target {target}"
        return
    if script == "-c":  # python -c "...": the code must at least compile
        compile(argv[0], f"{where}: python -c", "exec")
        return
    if script.startswith("benchmarks/"):
        assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        return
    assert script in PARSERS or script in CONSOLE, f"{where}: {script} is not a known entry point ({command!r})"
    module = importlib.import_module(PARSERS.get(script) or CONSOLE[script])
    try:
        module.parse_args(argv)
    except SystemExit as err:  # argparse: unknown flag, bad choice, missing required flag
        pytest.fail(f"{where}: `{command}` does not parse (exit {err.code}); see the error above")
    except ValueError as err:
        if not any(reason in str(err) for reason in LATER_FILES):
            pytest.fail(f"{where}: `{command}` is rejected: {err}")


def make_output_dirs() -> dict[str, str]:
    """`--output_dir` of every training command in the Makefile (its variables substituted) → the target."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    variables = dict(re.findall(r"^(\w+)\s*\?=\s*(\S+)", makefile, flags=re.M))
    found, target = {}, None
    for line in makefile.replace("\\\n", " ").splitlines():
        if match := re.match(r"^([\w-]+):", line):
            target = match.group(1)
        for folder in re.findall(r"--output_dir (\S+)", line) if "training/train_" in line else []:
            found.setdefault(re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], folder), target)
    return found


def test_training_commands_write_their_own_folders():
    """A training run refuses a folder that holds another run: no two documented training commands, and no
    documented command and make target, may share an --output_dir."""
    taken = {folder: f"make {target}" for folder, target in make_output_dirs().items()}
    assert "runs/ddpm-digits" in taken and "runs/vae-digits-32" in taken, taken
    clashes = []
    for where, command in COMMANDS:
        script, argv = entry_point(command)
        if script is None or not re.search(r"train[_-]", script) or "--output_dir" not in argv:
            continue
        folder = os.path.normpath(argv[argv.index("--output_dir") + 1])
        if folder in taken:
            clashes.append(f"{where}: `{command}` writes {folder}, as {taken[folder]} does")
        taken.setdefault(folder, f"{where}: `{command}`")
    assert not clashes, "\n".join(clashes)
