"""The Gradio page of a loaded pipeline: one tab per page of `engine.AppModel` (`tabs`), built from the same pieces
(`widgets`), with the queue set up; `launch_app` serves it."""

import os
import tempfile

import gradio as gr
import numpy as np
import PIL.Image

from .engine import AppModel
from .limits import Limits
from .tabs import cyclegan_tab, gan_tabs, generate_tab, img2img_tab, super_resolution_tab
from .widgets import Requests


def bundled_examples(model: AppModel) -> list[str]:
    """Example inputs shipped with the package's dependencies: a scikit-learn digit and scikit-image's cat."""
    from sklearn.datasets import load_digits

    from ..data.paired import bundled_photo

    folder = tempfile.mkdtemp(prefix="app-examples-")
    digit = PIL.Image.fromarray((load_digits().images[7] / 16 * 255).astype(np.uint8), mode="L")
    size = model.default_size if "img2img" in model.pages else (32, 32)
    digit = digit.resize((size[1], size[0]), PIL.Image.BILINEAR)
    cat = bundled_photo("chelsea")
    side = min(cat.size) // 2
    cat = cat.crop((cat.width // 2 - side // 2, 20, cat.width // 2 + side // 2, 20 + side)).resize((64, 64))
    paths = []
    for name, image in (("digit.png", digit), ("cat.png", cat)):
        paths.append(os.path.join(folder, name))
        image.save(paths[-1])
    return paths


def build_app(model: AppModel | str, limits: Limits | None = None, default_steps: int | None = None) -> gr.Blocks:
    """The page of `model` (an `AppModel`, or a pipeline folder / Hub repo id to load), with its queue set up.
    `default_steps`: the steps the page starts with (default: the model's, 4 for a distilled student, else 25)."""
    if not isinstance(model, AppModel):
        model = AppModel(model, limits)
    default_steps = default_steps or model.default_steps
    limits = limits or model.limits
    model.limits = limits
    requests = Requests()
    examples = bundled_examples(model)
    titles = {
        "generate": "Generate",
        "img2img": "Image to image / inpainting",
        "super_resolution": "Upscale",
        "cyclegan": "Translate",
    }
    with gr.Blocks(title=f"{type(model.pipe).__name__}: {model.source}") as demo:
        steps = bool({"generate", "img2img"} & set(model.pages))
        uploads = bool({"img2img", "super_resolution", "cyclegan"} & set(model.pages))
        gr.Markdown(f"## {type(model.pipe).__name__}\n`{model.source}`\n\n{limits.describe(steps, uploads)}")
        for page in model.pages:
            if page in ("stylegan", "gan"):
                gan_tabs(model, limits, requests)
                continue
            with gr.Tab(titles[page]):
                if page == "generate":
                    generate_tab(model, limits, requests, default_steps)
                elif page == "img2img":
                    img2img_tab(model, limits, requests, default_steps, examples)
                elif page == "super_resolution":
                    super_resolution_tab(model, limits, requests, examples)
                elif page == "cyclegan":
                    cyclegan_tab(model, limits, requests, examples)
                else:
                    raise ValueError(f"page must be one of {titles}, got {page!r}")
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    demo.app_model = model
    return demo


def launch_app(
    pipeline: AppModel | str,
    host: str | None = "127.0.0.1",
    port: int | None = None,
    limits: Limits | None = None,
    default_steps: int | None = None,
    **launch_kwargs,
):
    """Build and launch the page; `host=None` lets Gradio read GRADIO_SERVER_NAME (what a Space sets)."""
    limits = limits or (pipeline.limits if isinstance(pipeline, AppModel) else Limits())
    demo = build_app(pipeline, limits, default_steps)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{limits.max_upload_mb:g}mb",
        show_error=True,
        **launch_kwargs,
    )
    return demo
