"""Lazy package exports: a package lists `{name: submodule}` and its names are imported on first access (as
diffusers' `_LazyModule` does), so light entry points (`--help` of the command lines) never import torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, resolving each name of `names` from its (relative) submodule."""
    module_globals = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        module_globals[name] = value  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*module_globals, *names})

    return __getattr__, __dir__
