"""The page in a real browser: Debian's chromium driven by Playwright (`executable_path` to the system browser; the
browser download of `playwright install` is not used). Load the page, set a seed, click Generate, wait for the image,
check it is not blank and that the seed used is shown, save a screenshot; start a long run and cancel it, after which
the next run is served at once. Skipped, with the reason, where chromium or Playwright is not installed."""

from __future__ import annotations

import io
import os
import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from custom_pipelines.app import Limits
from tests.app.conftest import free_port

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
LONG_RUN_STEPS = 20000  # a minute on the tiny model: long enough to be cancelled mid-run
LONG_RUN_PROGRESS = re.compile(r"\d+/20k steps")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the browser test needs a real browser")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The tiny DDPM with a {LONG_RUN_STEPS}-step noise schedule (room for a long run), one request at a time (so a
    run that did not stop would hold up the next one)."""
    from custom_pipelines import DDPMAncestralScheduler, UnconditionalDiffusionPipeline
    from custom_pipelines.app import build_app
    from tests.utils import scheduler_config, tiny_unet

    folder = tmp_path_factory.mktemp("long-schedule") / "ddpm"
    scheduler = DDPMAncestralScheduler.from_config({**scheduler_config(), "num_train_timesteps": LONG_RUN_STEPS})
    UnconditionalDiffusionPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(folder)
    limits = Limits(max_images=4, max_steps=LONG_RUN_STEPS, concurrency=1)
    demo = build_app(str(folder), limits, default_steps=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    yield f"http://127.0.0.1:{port}/", demo.app_model
    demo.close()


def set_number(page, label: str, value: int):
    field = page.get_by_label(label, exact=True).first
    field.fill(str(value))
    field.press("Tab")  # Gradio reads a number field's value on blur


def gallery_image(page, timeout_ms: float) -> Image.Image:
    thumbnail = page.locator("#generate-gallery img").first
    thumbnail.wait_for(state="visible", timeout=timeout_ms)
    loaded = "() => { const i = document.querySelector('#generate-gallery img'); return i && i.naturalWidth > 0; }"
    page.wait_for_function(loaded, timeout=timeout_ms)
    return Image.open(io.BytesIO(thumbnail.screenshot()))


def test_generate_in_the_browser_then_cancel_a_long_run(browser, app_url, tmp_path):
    app_url, model = app_url
    before = model.counts.copy()
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app_url)
    page.locator("#generate-run").wait_for(timeout=60_000)
    set_number(page, "Seed", 1234)
    set_number(page, "Steps", 2)
    page.locator("#generate-run").click()
    image = np.asarray(gallery_image(page, 60_000).convert("L"), dtype=np.float32)
    assert image.std() > 5, "the generated image is blank"
    assert page.locator("#generate-seed-used input").input_value() == "1234"
    assert "manual_seed(s) for s in seeds" in page.locator("#generate-code").inner_text()
    screenshot = tmp_path / "app_generate.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert Image.open(screenshot).size[0] == 1280

    # a long run, cancelled: the page stops waiting, and the model is free for the next request at once
    set_number(page, "Steps", LONG_RUN_STEPS)
    page.locator("#generate-run").click()
    # the pipeline's own tqdm bar, shown by gr.Progress(track_tqdm=True): "377/20k steps"
    page.get_by_text(LONG_RUN_PROGRESS).first.wait_for(timeout=30_000)
    started = time.monotonic()
    page.locator("#generate-cancel").click()
    set_number(page, "Steps", 2)
    set_number(page, "Seed", 99)
    page.locator("#generate-run").click()
    page.wait_for_function(
        "() => { const i = document.querySelector('#generate-seed-used input'); return i && i.value === '99'; }",
        timeout=60_000,
    )
    waited = time.monotonic() - started
    assert waited < 20, f"the next run waited {waited:.0f} s: the cancelled run kept the model busy"
    assert page.get_by_text(LONG_RUN_PROGRESS).count() == 0
    assert model.counts - before == {"finished": 2, "cancelled": 1}  # the long run's loop stopped at our flag
    assert np.asarray(gallery_image(page, 30_000).convert("L"), dtype=np.float32).std() > 5
    page.close()


def test_inpainting_mask_drawn_in_the_browser(browser, app_url):
    """Pick the bundled digit, paint a stroke with the brush, Generate: the app receives the stroke as the mask (the
    code opens mask.png and the inputs used include it) and returns the images."""
    app_url, model = app_url
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app_url)
    page.get_by_role("tab", name="Image to image / inpainting").click()
    page.locator(".gallery-item").first.click()  # the bundled digit example
    page.get_by_role("button", name="Brush").first.click()
    box = page.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 30, y - 30)
    page.mouse.down()
    for k in range(16):
        page.mouse.move(x - 30 + 4 * k, y - 30 + 4 * k)
    page.mouse.up()
    seed = page.get_by_label("Seed", exact=True).nth(1)  # the second tab's seed
    seed.fill("5")
    seed.press("Tab")
    page.locator("#img2img-run").click()
    shown = "i => i && i.value === '5'"
    page.wait_for_function(f"() => ({shown})(document.querySelector('#img2img-seed-used input'))", timeout=60_000)
    assert "mask_image=[mask_image] * 2" in page.locator("#img2img-code").inner_text()
    assert page.get_by_text("mask.png").count() >= 1
    assert page.locator("#img2img-gallery img").count() == 2
    page.close()
