"""A Gradio web app for every pipeline type we ship, runnable locally and deployable unchanged as a Space.

    python -m custom_pipelines.app --pipeline runs/ddpm-digits            # http://127.0.0.1:7860
    python -m custom_pipelines.app --export_space OUT --pipeline user/repo  # app.py + requirements.txt + README.md

`engine.AppModel` loads a pipeline once and runs the requests of every page (no Gradio there); `ui.build_app` builds
the page that fits the pipeline; `space.export_space` writes a Space folder. The names below load on first use, so
`python -m custom_pipelines.app --help` answers before torch or Gradio is imported.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "AppModel": ".engine",
    "Cancelled": ".engine",
    "Result": ".engine",
    "Limits": ".limits",
    "build_app": ".ui",
    "launch_app": ".ui",
    "export_space": ".space",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name], __name__), name)
