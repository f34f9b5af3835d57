"""Check a saved pipeline folder before diffusers loads it, so that a broken file gets an error naming it.

diffusers (0.42) loads a truncated safetensors file with "Unable to load weights from checkpoint file", ignores
unknown config keys with a log line, reports a missing required config key as a TypeError from `__init__`, a
weight of the wrong shape with an empty parameter name, and falls back to pickled `.bin` weights when a component
has no safetensors. `check_pipeline_folder` finds each of these first and raises a `ValueError` that names the
file and what is wrong:

- model_index.json: every component names a library and class that exist (ours, diffusers', transformers');
- each component's config.json / scheduler_config.json parses; for our own model classes, no key the class does
  not take and none it needs missing (diffusers' and transformers' own classes keep their forward-compatible
  leniency: a newer release's extra keys must still load; scheduler configs keep the keys of the schedulers they
  were swapped from with `from_config`, as diffusers does, so they are not checked for extra keys);
- weights: pickled `.bin` / `.pt` / `.ckpt` / `.pth` files without a safetensors next to them are refused unless
  the caller passed `use_safetensors=False` (an explicit opt-in; diffusers then loads them with
  `torch.load(weights_only=True)`); every safetensors file's header and length are sound; for model components
  the tensor names and shapes match the model that the config builds (built on the meta device: no memory, no
  time).

Only what is on disk is checked: a Hub snapshot holding only model_index.json skips the component checks (the
weights are checked by safetensors and diffusers as they arrive).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG_FILES = ("config.json", "scheduler_config.json")
OUR_PACKAGE = "custom_pipelines"
COMPONENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _components(index: dict) -> dict[str, tuple[str, str]]:
    return {
        name: (value[0], value[1])
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
    }


def resolve_component_class(index_file: Path, name: str, library: str, class_name: str) -> type | None:
    """The class model_index.json names for `name`; None for a library we cannot judge (custom code)."""
    if library in ("diffusers", "transformers") or library.startswith(OUR_PACKAGE):
        module_name = library
    else:
        return None  # diffusers' custom-code components ("pipeline", a repo's own module): the code gate decides
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{index_file}: component {name!r} names library {library!r}, which cannot be imported "
                         f"({err})") from err  # fmt: skip
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(
            f"{index_file}: component {name!r} names class {class_name!r}, which library {library!r} does not have"
        )
    return cls


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_config_keys(path: Path, config: dict, cls: type) -> None:
    """For our own classes: every key is an `__init__` parameter and every parameter without a default is there."""
    init = getattr(cls, "__init__", None)
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL}
    ignored = set(getattr(cls, "ignore_for_config", []) or [])
    unknown = sorted(k for k in config if not k.startswith("_") and k not in names and k not in ignored)
    if unknown:
        raise ValueError(f"{path}: {cls.__name__} takes no key(s) {unknown}; it takes {sorted(names)}")
    required = sorted(
        n for n in names if params[n].default is inspect.Parameter.empty and n not in config and n not in ignored
    )
    if required:
        raise ValueError(f"{path}: {cls.__name__} needs key(s) {required}, missing from the file")


def check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a sound safetensors file; ValueError naming the file if its header or length is off."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError for unreadable files)
        raise ValueError(f"{path} is not a complete safetensors file (truncated or corrupted: {err})") from err


def _expected_shapes(cls: type, config: dict) -> dict[str, tuple[int, ...]] | None:
    import torch

    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception:  # a config diffusers will refuse itself with its own message
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(folder: Path, cls: type | None, config: dict | None, use_safetensors: bool | None) -> None:
    files = [p for p in folder.iterdir() if p.is_file()]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not safetensors and use_safetensors is not False:
        raise ValueError(
            f"{pickles[0]}: pickled weights and no .safetensors in {folder}. Pickles can run code when loaded, so "
            "they are refused; convert them to safetensors, or pass use_safetensors=False if you trust the file"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(safetensors):
        shapes.update(check_safetensors(path))
    if not shapes or cls is None or config is None:
        return
    from diffusers import ModelMixin

    if not (isinstance(cls, type) and issubclass(cls, ModelMixin)) or len(safetensors) != 1:
        return  # sharded or transformers weights: their own loaders match names
    expected = _expected_shapes(cls, config)
    if expected is None:
        return
    wrong = [(k, shapes[k], expected[k]) for k in expected if k in shapes and shapes[k] != expected[k]]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(
            f"{safetensors[0]}: {len(wrong)} tensor(s) do not match the shapes {folder / 'config.json'} gives, "
            f"e.g. {key!r} is {list(got)} in the file but {list(want)} in {cls.__name__}: the weights belong to "
            "another config"
        )


def check_repo_files(repo_id: str, files: list[str], index: dict, use_safetensors: bool | None = None) -> None:
    """A Hub repo's file list: refuse a component folder (of model_index.json `index`) with pickled weights and no
    safetensors (unless `use_safetensors=False`), before diffusers downloads and unpickles them."""
    if use_safetensors is False:
        return
    components = set(_components(index))
    folders: dict[str, list[str]] = {}
    for name in files:
        folders.setdefault(os.path.dirname(name), []).append(name)
    for sub, names in sorted(folders.items()):
        if sub not in components:
            continue
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles and not any(n.endswith(".safetensors") for n in names):
            raise ValueError(
                f"Hub repo {repo_id!r}: {pickles[0]} holds pickled weights and {sub or 'the repo root'}/ no "
                ".safetensors. Pickles can run code when loaded, so they are refused; pass use_safetensors=False "
                "if you trust the repo"
            )


def _is_model(cls: type) -> bool:
    from diffusers import ModelMixin

    return issubclass(cls, ModelMixin)


def check_pipeline_folder(folder: str | os.PathLike, use_safetensors: bool | None = None) -> None:
    """Raise a ValueError naming the file for the first broken part of a saved pipeline folder (module doc)."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    index = _read_json(index_file)
    for name, (library, class_name) in _components(index).items():
        if not COMPONENT_NAME.fullmatch(name):  # a component is a subfolder: no path may leave the folder
            raise ValueError(f"{index_file}: component name {name!r} is not a plain folder name (letters, digits, _)")
        cls = resolve_component_class(index_file, name, library, class_name)
        sub = folder / name
        if not sub.is_dir():
            continue  # a Hub snapshot with only model_index.json, or a component passed in by the caller
        config, config_path = None, None
        for config_name in CONFIG_FILES:
            if (sub / config_name).is_file():
                config_path = sub / config_name
                config = _read_json(config_path)
                break
        if config is not None and cls is not None and library.startswith(OUR_PACKAGE) and _is_model(cls):
            check_config_keys(config_path, config, cls)
        check_weights(sub, cls, config, use_safetensors)
