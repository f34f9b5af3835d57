"""One builder per page of `engine.AppModel`: the controls of the pipeline's type, wired to the model's method."""

import gradio as gr

from .engine import AppModel, resolve_seed
from .limits import Limits
from .widgets import (
    Outputs,
    Requests,
    buttons,
    cached_examples,
    checked_image,
    checked_image_editor,
    conditioning_controls,
    editor_inputs,
    num_images_control,
    seed_controls,
    steps_and_scheduler,
    wire,
)


def generate_tab(model: AppModel, limits: Limits, requests: Requests, default_steps: int):
    inputs = seed_controls()
    with gr.Row():
        inputs["num_images"] = num_images_control(limits)
        inputs["eta"] = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="eta (DDIM's η; schedulers that take it)")
    inputs.update(steps_and_scheduler(model, limits, default_steps))
    inputs.update(conditioning_controls(model))
    if model.takes_size:
        h, w = model.default_size
        with gr.Row():
            step = model.size_multiple
            inputs["height"] = gr.Slider(step, 4 * h, value=h, step=step, label="Height (pixels)")
            inputs["width"] = gr.Slider(step, 4 * w, value=w, step=step, label="Width (pixels)")
    run, cancel = buttons("generate")
    outputs = Outputs("generate", uploads=False)

    def fn(event, seed, randomize_seed, **kwargs):
        return model.generate(resolve_seed(seed, randomize_seed), cancel=event, **kwargs)

    wire(run, cancel, fn, inputs, outputs, requests, "generate", limits)
    cached_examples(inputs, outputs, fn, requests, [{"seed": 0}, {"seed": 1}])


def img2img_tab(model: AppModel, limits: Limits, requests: Requests, default_steps: int, examples: list[str]):
    editor = checked_image_editor(
        limits,
        label="Input image: upload or pick an example; paint over the part to repaint (inpainting), or leave it",
        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=4),
        transforms=(),
    )
    gr.Examples(examples=[[path] for path in examples], inputs=[editor], label="Bundled examples")
    inputs = {"image": editor, **seed_controls()}
    with gr.Row():
        inputs["num_images"] = num_images_control(limits, 2)
        inputs["strength"] = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Strength (1 = from pure noise)")
    inputs.update(steps_and_scheduler(model, limits, default_steps))
    inputs.update(conditioning_controls(model))
    run, cancel = buttons("img2img")
    outputs = Outputs("img2img", uploads=True)

    def fn(event, image, seed, randomize_seed, **kwargs):
        image, mask = editor_inputs(image)
        return model.img2img(resolve_seed(seed, randomize_seed), image, mask, cancel=event, **kwargs)

    wire(run, cancel, fn, inputs, outputs, requests, "img2img", limits)


def super_resolution_tab(model: AppModel, limits: Limits, requests: Requests, examples: list[str]):
    inputs = {
        "image": checked_image(limits, label="Low-resolution input", sources=["upload", "clipboard"]),
        "tile_size": gr.Number(
            label="Tile size: 0 = the whole image at once; tiles bound memory on large inputs, with the same result",
            info=f"0, or more than {2 * model.pipe.upscaler.receptive_radius} input pixels",
            value=0,
            precision=0,
        ),
    }
    run, cancel = buttons("upscale")
    outputs = Outputs("upscale", uploads=True)

    def fn(event, image, tile_size):
        return model.super_resolution(image, int(tile_size or 0) or None)

    wire(run, cancel, fn, inputs, outputs, requests, "upscale", limits)
    cached_examples(inputs, outputs, fn, requests, [{"image": path} for path in examples])


def cyclegan_tab(model: AppModel, limits: Limits, requests: Requests, examples: list[str]):
    from ..pipelines.pipeline_cyclegan import DIRECTIONS

    inputs = {
        "image": checked_image(limits, label="Input image", sources=["upload", "clipboard"]),
        "direction": gr.Radio(list(DIRECTIONS), value=DIRECTIONS[0], label="Direction"),
    }
    run, cancel = buttons("translate")
    outputs = Outputs("translate", uploads=True)

    def fn(event, image, direction):
        return model.cyclegan(image, direction)

    wire(run, cancel, fn, inputs, outputs, requests, "translate", limits)
    cached_examples(inputs, outputs, fn, requests, [{"image": path} for path in examples])


def gan_tabs(model: AppModel, limits: Limits, requests: Requests):
    stylegan = model.pages[0] == "stylegan"
    with gr.Tab("Sample"):
        inputs = seed_controls()
        with gr.Row():
            inputs["num_images"] = num_images_control(limits)
            if stylegan:
                inputs["truncation_psi"] = gr.Slider(-1.0, 2.0, value=0.7, step=0.05, label="Truncation ψ")
        run, cancel = buttons("sample")
        outputs = Outputs("sample", uploads=False)

        def fn(event, seed, randomize_seed, **kwargs):
            return model.sample_gan(resolve_seed(seed, randomize_seed), **kwargs)

        wire(run, cancel, fn, inputs, outputs, requests, "sample", limits)
        cached_examples(inputs, outputs, fn, requests, [{"seed": 0}, {"seed": 1}])
    if not stylegan:
        return
    with gr.Tab("Style mixing"):
        num_ws = model.pipe.stylegan.num_ws
        with gr.Row():
            inputs = {
                "seeds_a": gr.Textbox(label="Row seeds (A: coarse styles kept)", value="1, 2, 3"),
                "seeds_b": gr.Textbox(label="Column seeds (B: styles copied in)", value="4, 5, 6"),
            }
        with gr.Row():
            inputs["crossover"] = gr.Dropdown(
                ["coarse", "middle", "fine", *map(str, range(num_ws + 1))],
                value=str(num_ws // 2),
                label="B's styles: a band, or every layer from k on",
            )
            inputs["truncation_psi"] = gr.Slider(-1.0, 2.0, value=0.7, step=0.05, label="Truncation ψ")
        run, cancel = buttons("style_mix")
        outputs = Outputs("style_mix", uploads=False)
        wire(run, cancel, lambda event, **kw: model.style_mix(**kw), inputs, outputs, requests, "style_mix", limits)
    with gr.Tab("Interpolation"):
        with gr.Row():
            inputs = {
                "seed_a": gr.Number(label="From seed", value=1, precision=0, minimum=0),
                "seed_b": gr.Number(label="To seed", value=2, precision=0, minimum=0),
                "steps": gr.Number(
                    label="Images in the strip", value=8, precision=0, info=f"2 to {2 * limits.max_images}"
                ),
                "truncation_psi": gr.Slider(-1.0, 2.0, value=0.7, step=0.05, label="Truncation ψ"),
            }
        run, cancel = buttons("interpolate")
        outputs = Outputs("interpolate", uploads=False)
        wire(
            run, cancel, lambda event, **kw: model.interpolate(**kw), inputs, outputs, requests, "interpolate", limits
        )
