"""Training recipes as data: `training_recipe.json` beside a variant's model configs holds the flags it trains with
(loss, learning rates, betas, ...). A flag given on the command line wins over the recipe, the recipe over the
flag's default. Any script can read one: `parse_command_line` tells which flags the user gave, `read_recipe`
checks the file against the script's own parser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RECIPE_FILE = "training_recipe.json"
# flags that say where a run reads and writes, not how it trains: a recipe cannot set them
NOT_RECIPE_FLAGS = frozenset({"model_config", "pretrained_model_name_or_path", "output_dir", "resume_from_checkpoint"})
_UNSET = object()  # a flag the command line did not give


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, set]:
    """The parsed flags, and the names of those the command line gave (the others a recipe may set)."""
    names = {action.dest for action in parser._actions if action.dest != argparse.SUPPRESS}
    args = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, _UNSET)))
    given = {name for name in names if getattr(args, name) is not _UNSET}
    for name in names - given:
        setattr(args, name, parser.get_default(name))
    return args, given


def read_recipe(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The recipe's flags and their values; a key that is not a flag of the script, or a bad value, raises."""
    with open(path, encoding="utf-8") as f:
        recipe = json.load(f)
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} must hold one JSON object of flag names and values, got {type(recipe).__name__}")
    actions = {action.dest: action for action in parser._actions if action.dest not in NOT_RECIPE_FLAGS}
    for key, value in recipe.items():
        if key not in actions or key == argparse.SUPPRESS:  # SUPPRESS: the dest of --help
            raise ValueError(f"{path}: {key!r} is not a flag a recipe can set (see the script's --help)")
        recipe[key] = recipe_value(actions[key], value, f"{path}: {key!r}")
    return recipe


def recipe_value(action: argparse.Action, value, where: str):
    """A JSON value as the flag's value: true/false for a switch, a number for a numeric flag, else a string."""
    if value is None:
        ok = action.default is None
    elif action.nargs == 0:  # store_true, --x/--no-x
        ok = isinstance(value, bool)
    elif action.type in (int, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (action.type is float or float(value).is_integer())
        value = action.type(value) if ok else value
    else:
        ok = action.nargs is None and isinstance(value, str)
    if not ok or (action.choices is not None and value not in action.choices):
        choices = f" (one of {list(action.choices)})" if action.choices is not None else ""
        raise ValueError(f"{where}: {value!r} is not a valid {action.option_strings[0]} value{choices}")
    return value


def apply_variant_recipe(
    args: argparse.Namespace, parser: argparse.ArgumentParser, given: set, sources, accept=None
) -> Path | None:
    """Apply the recipe of the first of `sources` (variant names, folders or Hub ids; None skipped) that holds one:
    every flag the command line did not give takes the recipe's value. `accept(folder)` may turn a folder down (a
    variant of another family). Sets `args.training_recipe` to the file used (None without one) and returns it."""
    from custom_pipelines.hub.configs import resolve_variant

    args.training_recipe = None
    for source in sources:
        if not source:
            continue
        folder = resolve_variant(source)
        path = folder / RECIPE_FILE
        if not path.is_file() or (accept is not None and not accept(folder)):
            continue
        for key, value in read_recipe(path, parser).items():
            if key not in given:
                setattr(args, key, value)
        args.training_recipe = str(path)
        return path
    return None
