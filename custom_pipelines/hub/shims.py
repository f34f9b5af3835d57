"""The one-line `.py` files that let diffusers' own loaders find our classes in a saved folder or a Hub repo.

`DiffusionPipeline.from_pretrained` resolves `_class_name` only inside the diffusers namespace, and its `download()`
rejects a component whose library is neither diffusers nor transformers unless the repo carries
`<component>/<library>.py` (`pipeline_loading_utils._get_custom_components_and_folders`). So every folder we save
carries:

- `pipeline.py`: `from custom_pipelines import <PipelineClass>`, with `_class_name: ["pipeline", "<PipelineClass>"]`
  in model_index.json, so `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` returns our class;
- `<component>/<library>.py` for each component whose library is ours (the library string of model_index.json is the
  file name, dots and all): `from <library> import <Class>`.

A shim only imports from the installed `custom_pipelines`, so loading a folder whose every `.py` file is exactly a
shim we would write runs no code from the folder. `foreign_code` finds the files that are not; the loaders
(`custom_pipelines.hub.loading`) keep diffusers' `trust_remote_code` gate for them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PACKAGE = "custom_pipelines"
PIPELINE_SHIM = "pipeline.py"
MODEL_INDEX = "model_index.json"

# Names that go into a shim's import line must be plain dotted identifiers: anything else (a newline, a `;`) would
# let model_index.json, which ships with the repo, write code into the file we then call "ours".
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OUR_LIBRARY = re.compile(rf"{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)*")


def read_index(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MODEL_INDEX
    if not path.is_file():
        raise ValueError(f"{folder} has no {MODEL_INDEX}: not a saved pipeline folder")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


def pipeline_class_name(index: dict) -> str | None:
    """The `_class_name` of model_index.json, plain or as diffusers' custom-code pair `["pipeline", name]`."""
    class_name = index.get("_class_name")
    if isinstance(class_name, (list, tuple)) and len(class_name) == 2:
        class_name = class_name[1]
    return class_name if isinstance(class_name, str) else None


def is_public_pipeline(class_name: str) -> bool:
    """Whether `from custom_pipelines import <class_name>` gives a pipeline class."""
    import custom_pipelines

    return class_name in custom_pipelines.__all__ and class_name.endswith("Pipeline")


def _our_components(index: dict) -> dict[str, tuple[str, str]]:
    """`{component: (library, class)}` for the components of model_index.json whose library is our package."""
    components = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        if isinstance(library, str) and (library == PACKAGE or library.startswith(PACKAGE + ".")):
            components[name] = (library, class_name)
    return components


def expected_shims(index: dict) -> dict[str, str]:
    """`{path relative to the folder: content}` of the shims we write for this model_index.json.

    Only names that are plain identifiers (and libraries inside our package) get a shim; a malformed entry gets none,
    so a `.py` file the repo carries for it counts as foreign code.
    """
    shims = {}
    class_name = pipeline_class_name(index)
    if class_name is not None and IDENTIFIER.fullmatch(class_name) and is_public_pipeline(class_name):
        shims[PIPELINE_SHIM] = f"from {PACKAGE} import {class_name}\n"
    for component, (library, cls) in _our_components(index).items():
        if IDENTIFIER.fullmatch(component) and OUR_LIBRARY.fullmatch(library) and isinstance(cls, str):
            if IDENTIFIER.fullmatch(cls):
                shims[f"{component}/{library}.py"] = f"from {library} import {cls}\n"
    return shims


def code_files(folder: str | os.PathLike) -> list[str]:
    """Every `.py` file under `folder`, as sorted POSIX paths relative to it (what diffusers could import)."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())


def foreign_code(folder: str | os.PathLike) -> list[str]:
    """The `.py` files of a pipeline folder that are not exactly a shim we would write for its model_index.json."""
    shims = expected_shims(read_index(folder))
    root = Path(folder)
    return [
        path
        for path in code_files(folder)
        if shims.get(path) != (root / path).read_text(encoding="utf-8", errors="replace")
    ]


def write_shims(folder: str | os.PathLike) -> list[str]:
    """Make a saved pipeline folder loadable by diffusers' own loaders; returns the shim paths written.

    Rewrites `_class_name` as `["pipeline", name]` (when the pipeline class is one `custom_pipelines` exports) and
    writes `pipeline.py` and one `<component>/<library>.py` per component of ours. Idempotent; leaves other files
    alone (a stale shim is overwritten, a foreign `.py` file is not ours to delete).
    """
    index = read_index(folder)
    class_name = pipeline_class_name(index)
    if class_name is not None and is_public_pipeline(class_name) and index["_class_name"] != ["pipeline", class_name]:
        index["_class_name"] = ["pipeline", class_name]
        _write_text(Path(folder) / MODEL_INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    shims = expected_shims(index)
    for path, content in shims.items():
        target = Path(folder) / path
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            _write_text(target, content)
    return sorted(shims)


def check_shims(folder: str | os.PathLike) -> list[str]:
    """What keeps `folder` from loading with every loader: missing or wrong shims, foreign code. Empty when fine."""
    index = read_index(folder)
    problems = []
    class_name = pipeline_class_name(index)
    if class_name is not None and is_public_pipeline(class_name) and index["_class_name"] != ["pipeline", class_name]:
        problems.append(f'{MODEL_INDEX}: _class_name is {index["_class_name"]!r}, not ["pipeline", "{class_name}"]')
    shims = expected_shims(index)
    problems += [f"{path}: missing" for path in sorted(shims) if not (Path(folder) / path).is_file()]
    problems += [f"{path}: not a shim custom_pipelines writes" for path in foreign_code(folder)]
    return problems


def _write_text(path: Path, content: str) -> None:
    from custom_pipelines.io import atomic_path

    with atomic_path(path, suffix=path.suffix) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(content)
