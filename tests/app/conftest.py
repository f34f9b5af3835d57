"""Tiny saved pipelines of every type and the app launched on each, in this process, on a free 127.0.0.1 port.

One app per pipeline type, shared by the tests of a module (`launched(kind)`), closed at the end of the session; the
pipelines are the tiny seeded builders of the pipelines' own tests (tests/test_sample_cli.py `build_tiny`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from custom_pipelines.app import Limits
from tests.test_sample_cli import tiny_pipeline_folders

# lazily cached examples land in a temporary folder, not in the working directory's .gradio/
os.environ.setdefault("GRADIO_EXAMPLES_CACHE", tempfile.mkdtemp(prefix="gradio-examples-"))
LIMITS = Limits(max_images=4, max_steps=60, max_upload_mb=2, max_pixels=256 * 256, queue_size=8, concurrency=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launched:
    kind: str
    folder: str
    url: str
    demo: object

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)


@pytest.fixture(scope="session")
def saved_app_pipeline(tmp_path_factory):
    return tiny_pipeline_folders(tmp_path_factory.mktemp("app-pipelines"))


@pytest.fixture(scope="session")
def launched(saved_app_pipeline, tmp_path_factory):
    """`launched(kind)` → the app of the tiny `kind` pipeline, running (started on first use)."""
    from custom_pipelines.app import build_app

    apps: dict[str, Launched] = {}

    def launch(kind: str) -> Launched:
        if kind not in apps:
            folder = saved_app_pipeline(kind)
            demo = build_app(folder, LIMITS, default_steps=2)
            port = free_port()
            demo.launch(
                server_name="127.0.0.1",
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                max_file_size=f"{LIMITS.max_upload_mb:g}mb",
                show_error=True,
            )
            apps[kind] = Launched(kind, folder, f"http://127.0.0.1:{port}/", demo)
        return apps[kind]

    yield launch
    for app in apps.values():
        with contextlib.suppress(Exception):
            app.demo.close()


@pytest.fixture(scope="session")
def upload_files(tmp_path_factory) -> dict[str, Path]:
    """Inputs: an 8×8 gray digit-like image, its inpainting mask (an RGBA stroke layer), a 32×32 RGB photo, a
    10000×10000 image (past --max_pixels), and a text file named like an image."""
    root = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    files = {
        "gray": root / "gray.png",
        "rgb": root / "rgb.png",
        "stroke": root / "stroke.png",
        "huge": root / "huge.png",
        "text": root / "notes.png",
    }
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(files["gray"])
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB").save(files["rgb"])
    stroke = np.zeros((8, 8, 4), dtype=np.uint8)
    stroke[2:6, 2:6] = 255  # painted square: repaint; the rest is transparent: keep
    Image.fromarray(stroke, mode="RGBA").save(files["stroke"])
    Image.new("L", (10000, 10000)).save(files["huge"])  # compresses to ~100 KB: the pixel limit, not the byte one
    files["text"].write_text("this is not an image\n")
    return files


def run_snippet(code: str, folder: Path, inputs: dict[str, Path] | None = None) -> list[np.ndarray]:
    """Run the "as Python" code as written, in `folder` (with the input files it opens), and return the images it
    saved, in order."""
    import shutil

    for name, source in (inputs or {}).items():
        shutil.copy(source, folder / name)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(code, "as-python snippet", "exec"), {"__name__": "__snippet__"})
    finally:
        os.chdir(cwd)
    saved = sorted(folder.glob("image_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    return [np.asarray(Image.open(p)) for p in saved]


def gallery_arrays(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"])) for item in gallery]
