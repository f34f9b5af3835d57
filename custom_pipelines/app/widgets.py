"""The pieces every tab of the app is made of: checked uploads, the per-session cancel flags, the handler that turns
a request's result (or its bad input) into the tab's outputs, the outputs block and the common controls.

Every tab has Generate and Cancel buttons, a gallery (PNG, with Gradio's download buttons), the seed actually used,
the "as Python" code that reproduces the images (copyable), the exact input files for upload tabs, and examples
cached lazily (on first use). Progress comes from the pipeline's own tqdm bar (`gr.Progress(track_tqdm=True)`).
Bad input is answered in the page with the message our pipelines raise (`gr.Error`), never a stack trace, and the
server goes on serving. All generating events share one concurrency group: `Limits.concurrency` requests run at once.
"""

import inspect
import logging
import os
import tempfile
import threading

import gradio as gr
import numpy as np
import PIL.Image

from ..io import save_image
from .engine import DEFAULT_SCHEDULER, AppModel, Cancelled, Result
from .limits import Limits

logger = logging.getLogger(__name__)

CONCURRENCY_ID = "pipeline"  # every event that runs the model shares one concurrency limit


# ----- uploads: checked before anything decodes them -----------------------------------------------------------------
def checked_image(limits: Limits, **kwargs) -> gr.Image:
    """`gr.Image` whose upload is checked against the limits (bytes, pixels) and read by us: a file that is no image
    answers with "image: cannot read x.txt as an image (...)" instead of PIL's exception. (The check wraps the
    instance's `preprocess`: a subclass of a Gradio component makes Gradio write a .pyi stub next to this module.)"""
    component = gr.Image(type="pil", **kwargs)
    preprocess = component.preprocess

    def checked(payload):
        if payload is None:
            return None
        if payload.path is not None:
            return _checked(lambda: limits.open_upload(payload.path, "image"))
        return _checked(lambda: preprocess(payload))

    component.preprocess = checked
    return component


def checked_image_editor(limits: Limits, **kwargs) -> gr.ImageEditor:
    """`gr.ImageEditor` for img2img: the background is the input image (checked as in `checked_image`), the strokes
    the inpainting mask."""
    component = gr.ImageEditor(type="pil", **kwargs)
    preprocess = component.preprocess

    def checked(payload):
        if payload is None:
            return None
        background = getattr(payload, "background", None)
        if background is not None and getattr(background, "path", None):
            _checked(lambda: limits.open_upload(background.path, "image"))
        return _checked(lambda: preprocess(payload))

    component.preprocess = checked
    return component


def _checked(read):
    try:
        return read()
    except (ValueError, OSError) as err:
        raise gr.Error(str(err), print_exception=False) from None


def editor_inputs(value) -> tuple[PIL.Image.Image | None, PIL.Image.Image | None]:
    """An ImageEditor value → (the image, the mask: white where any layer was painted; None without strokes)."""
    if not value or value.get("background") is None:
        return None, None
    image = value["background"]
    image = image if image.mode in ("L", "RGB") else image.convert("RGB")
    painted = np.zeros((image.height, image.width), dtype=bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        if layer.size != image.size:
            layer = layer.resize(image.size, PIL.Image.NEAREST)
        rgba = np.asarray(layer.convert("RGBA"))
        painted |= rgba[..., 3] > 0
    mask = PIL.Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), mode="L") if painted.any() else None
    return image, mask


# ----- running a request from the page -------------------------------------------------------------------------------
class Requests:
    """The cancel flags of running requests, by browser session: Cancel stops only its own user's run."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        # the input files handed back for the code: one folder per session, rewritten by its next request (Gradio
        # copies a returned file into its own cache), so a long-running app does not pile up folders
        self.files_root = tempfile.mkdtemp(prefix="app-inputs-")

    def files_folder(self, request: gr.Request | None) -> str:
        folder = os.path.join(self.files_root, _session(request))
        os.makedirs(folder, exist_ok=True)
        return folder

    def start(self, request: gr.Request | None) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[_session(request)] = event
        return event

    def cancel(self, request: gr.Request | None = None) -> None:
        with self._lock:
            event = self._events.get(_session(request))
        if event is not None:
            event.set()

    def finish(self, request: gr.Request | None, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(_session(request)) is event:
                del self._events[_session(request)]


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "no-session"


def _outputs(result: Result, folder: str) -> tuple:
    captions = result.captions or [f"image {i}" for i in range(len(result.images))]
    gallery = list(zip(result.images, captions))
    files = None
    if result.inputs:  # the exact inputs the call got, for the "as Python" code
        files = []
        for name, image in result.inputs.items():
            files.append(os.path.join(folder, name))
            save_image(image, files[-1])
    return gallery, result.seed, result.code, files


def answer(requests: Requests, run):
    """Run `run(cancel_event, **inputs)` for the page: a Result → the tab's outputs; bad input → gr.Error with its
    message."""

    def handle(request: gr.Request | None, **inputs):
        event = requests.start(request)
        try:
            return _outputs(run(event, **inputs), requests.files_folder(request))
        except Cancelled as err:
            gr.Warning(str(err))
            return [], None, "", None
        except (ValueError, TypeError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # a bug of ours: logged with its traceback on the server, one line in the page
            logger.exception("request failed")
            raise gr.Error(f"{type(err).__name__}: {err}", print_exception=False) from None
        finally:
            requests.finish(request, event)

    return handle


def _handler(handle, names: list[str]):
    """`handle(request, **inputs)` as the function Gradio calls, with the inputs' names as its API parameters.
    Gradio finds `gr.Request` and `gr.Progress` among the positional parameters of the signature (by annotation /
    default), so the signature is spelled out."""

    def handler(*values):
        *inputs, request, _progress = values
        return handle(request, **dict(zip(names, inputs)))

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter(name, positional) for name in names]
    parameters.append(inspect.Parameter("request", positional, annotation=gr.Request))
    parameters.append(inspect.Parameter("progress", positional, default=gr.Progress(track_tqdm=True)))
    handler.__signature__ = inspect.Signature(parameters)
    handler.__annotations__ = {"request": gr.Request}
    return handler


# ----- the page ------------------------------------------------------------------------------------------------------
class Outputs:
    """What every tab shows; element ids `<api_name>-gallery`, `<api_name>-seed-used`, ... for browser tests."""

    def __init__(self, name: str, uploads: bool):
        self.gallery = gr.Gallery(
            label="Images", format="png", columns=4, height="auto", interactive=False, elem_id=f"{name}-gallery"
        )
        with gr.Row():
            self.seed = gr.Number(label="Seed used", precision=0, interactive=False, elem_id=f"{name}-seed-used")
            self.files = gr.File(label="Inputs used (for the code)", file_count="multiple", visible=uploads)
        self.code = gr.Code(
            label="As Python (reproduces these images)", language="python", interactive=False, elem_id=f"{name}-code"
        )

    def list(self):
        return [self.gallery, self.seed, self.code, self.files]


def seed_controls() -> dict:
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
        randomize = gr.Checkbox(label="Randomize seed", value=False)
    return {"seed": seed, "randomize_seed": randomize}


def buttons(name: str):
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id=f"{name}-run")
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{name}-cancel")
    return run, cancel


def wire(run, cancel, fn, inputs: dict, outputs: Outputs, requests: Requests, api_name: str, limits: Limits):
    """`fn(cancel_event, **inputs)` on Generate (API `/<api_name>`), Cancel stopping it."""
    names = [name for name, component in inputs.items() if component is not None]
    event = run.click(
        _handler(answer(requests, fn), names),
        inputs=[inputs[name] for name in names],
        outputs=outputs.list(),
        api_name=api_name,
        concurrency_limit=limits.concurrency,
        concurrency_id=CONCURRENCY_ID,
    )
    # queue=False: Cancel must not wait behind the run it cancels; the flag stops our loop at its next step
    cancel.click(requests.cancel, None, None, cancels=[event], queue=False, api_name=f"cancel_{api_name}")
    return event


def cached_examples(inputs: dict, outputs: Outputs, fn, requests: Requests, rows: list[dict]):
    """Examples computed on first use and cached after (`cache_mode="lazy"`); a row names the inputs it sets, the
    others take their current default."""
    names = [name for name, component in inputs.items() if component is not None]
    gr.Examples(
        examples=[[row.get(name, inputs[name].value) for name in names] for row in rows],
        inputs=[inputs[name] for name in names],
        outputs=outputs.list(),
        fn=_handler(answer(requests, fn), names),
        cache_examples=True,
        cache_mode="lazy",
    )


def conditioning_controls(model: AppModel) -> dict:
    controls = {}
    if model.condition == "class":
        choices = model.class_choices
        controls["class_label"] = gr.Dropdown(
            choices=choices,
            value=choices[0][1] if choices else "0",
            allow_custom_value=True,
            label="Class (pick a name, or type an id or a name from id2label)",
        )
    elif model.condition == "text":
        controls["prompt"] = gr.Textbox(label="Prompt", value="a handwritten digit seven")
        controls["negative_prompt"] = gr.Textbox(label="Negative prompt", value="")
    if model.condition in ("class", "text"):
        controls["guidance_scale"] = gr.Slider(
            0.0, 10.0, value=model.default("guidance_scale", 2.0), step=0.1, label="Guidance scale"
        )
    return controls


def steps_and_scheduler(model: AppModel, limits: Limits, default_steps: int) -> dict:
    # the app's limit, or the model's own where that is lower (its T, or a distilled student's grid)
    top = min(limits.max_steps, model.max_model_steps or limits.max_steps)
    with gr.Row():
        steps = gr.Number(label="Steps", value=min(default_steps, top), precision=0, info=f"1 to {top}")
        scheduler = gr.Dropdown(model.scheduler_names, value=DEFAULT_SCHEDULER, label="Scheduler")
    return {"num_inference_steps": steps, "scheduler": scheduler}


def num_images_control(limits: Limits, value: int = 4):
    return gr.Number(
        label="Number of images", value=min(value, limits.max_images), precision=0, info=f"1 to {limits.max_images}"
    )
