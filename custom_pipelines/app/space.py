"""`--export_space OUT`: a Hugging Face Space folder (app.py, requirements.txt, README.md) that runs this app for a
Hub pipeline repo unchanged: `huggingface_hub.upload_folder(repo_id=..., repo_type="space", folder_path=OUT)`.

A Gradio Space runs `python app.py` with GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT=7860 set by the Space;
`app.py` passes no host or port, so Gradio reads them (and locally the app stays on 127.0.0.1:7860). The README's
YAML front matter is what Spaces read: `sdk: gradio`, `sdk_version`, `app_file` and `models:` (the repo it serves,
which links the Space from the model page).
"""

from __future__ import annotations

import json
import os

from ..io import atomic_path
from .limits import Limits

APP_TEMPLATE = '''"""Gradio Space for the pipeline {repo_id}.

Written by `python -m custom_pipelines.app --export_space`.
"""

from custom_pipelines.app import Limits, launch_app

PIPELINE = {repo_id!r}
LIMITS = Limits(**{limits})

if __name__ == "__main__":
    launch_app(PIPELINE, host=None, port=None, limits=LIMITS)  # host and port: the Space's GRADIO_SERVER_* variables
'''

README_TEMPLATE = """---
title: {title}
emoji: 🎨
colorFrom: indigo
colorTo: gray
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
models:
- {repo_id}
---

# {title}

A web app for the pipeline [{repo_id}](https://huggingface.co/{repo_id}) made with `custom_pipelines.app`: every
control of the pipeline's type, the seed used, and the `from_pretrained` + call that reproduces each image.

Run it locally: `pip install -r requirements.txt && python app.py` (http://127.0.0.1:7860).
"""


def export_space(
    out_dir: str | os.PathLike, repo_id: str, limits: Limits | None = None, requirement: str | None = None
):
    """Write `app.py`, `requirements.txt` and `README.md` for a Space serving `repo_id`; returns the folder.

    `requirement` is the pip line that installs this package on the Space (default: `custom-pipelines==<version>`;
    give a `git+https://...` URL or a wheel URL where the package is not on PyPI)."""
    from importlib.metadata import PackageNotFoundError, version

    import gradio

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or os.path.isdir(repo_id):
        raise ValueError(
            f"--pipeline must be a Hub repo id 'owner/name' for --export_space (a Space downloads it), got {repo_id!r}"
        )
    if requirement is None:
        try:
            requirement = f"custom-pipelines=={version('custom-pipelines')}"
        except PackageNotFoundError:
            requirement = "custom-pipelines"
    limits = limits or Limits()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    fields = {name: getattr(limits, name) for name in limits.__dataclass_fields__}
    files = {
        "app.py": APP_TEMPLATE.format(repo_id=repo_id, limits=json.dumps(fields)),
        "requirements.txt": f"{requirement}\ngradio=={gradio.__version__}\n",
        "README.md": README_TEMPLATE.format(
            title=repo_id.split("/")[1], repo_id=repo_id, gradio_version=gradio.__version__
        ),
    }
    for name, text in files.items():
        with atomic_path(os.path.join(out_dir, name)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return out_dir
