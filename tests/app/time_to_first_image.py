"""Time to first image of the web app, and the page's screenshot for the docs (a script, not a test).

    python tests/app/time_to_first_image.py --pipeline runs/ddpm-digits --screenshot docs/images/app_ddpm_digits.png

Cold start: `python -m custom_pipelines.app --pipeline ...` started → the page answers (imports, loading the pipeline,
building the page). First image: the first Generate with the page's defaults (seed 0, 4 images, 25 steps, the saved
scheduler), through gradio_client as a browser sends it. Next image: the same request again with seed 1. Then the page
is loaded in Chromium (Playwright), seed 7 generated, and the whole page saved as a PNG. Prints one JSON line with
the CPU kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import httpx


def cpu_kind() -> str:
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    name = re.search(r"model name\s*:\s*(.+)", info)
    flags = set((re.search(r"flags\s*:\s*(.+)", info) or re.search("(.*)", "")).group(1).split())
    simd = "AVX-512 + avx512_bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{name.group(1).strip() if name else platform.processor()}, {simd}, {os.cpu_count()} cores"


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the app did not answer within {timeout} s")


def screenshot(url: str, path: str, seed: int = 7) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1300})
        page.goto(url)
        page.locator("#generate-run").wait_for(timeout=60_000)
        field = page.get_by_label("Seed", exact=True).first
        field.fill(str(seed))
        field.press("Tab")
        page.locator("#generate-run").click()
        shown = "i => i && i.value === '" + str(seed) + "'"
        page.wait_for_function(
            f"() => ({shown})(document.querySelector('#generate-seed-used input'))", timeout=300_000
        )
        page.wait_for_timeout(500)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        page.screenshot(path=path, full_page=True)
        browser.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="runs/ddpm-digits")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--screenshot", default=None, help="PNG path of the page's screenshot")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from gradio_client import Client

    url = f"http://127.0.0.1:{args.port}/"
    started = time.perf_counter()
    command = [sys.executable, "-m", "custom_pipelines.app", "--pipeline", args.pipeline, "--port", str(args.port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(url, process)
        cold = time.perf_counter() - started
        client = Client(url, verbose=False)
        times = []
        for seed in (0, 1):
            start = time.perf_counter()
            client.predict(seed=seed, num_images=4, num_inference_steps=25, api_name="/generate")
            times.append(time.perf_counter() - start)
        if args.screenshot:
            screenshot(url, args.screenshot)
    finally:
        process.terminate()
        process.wait(timeout=30)
    result = {"pipeline": args.pipeline, "cold_start_s": round(cold, 1), "first_image_s": round(times[0], 2)}
    result.update(next_image_s=round(times[1], 2), request="4 images, 25 steps", cpu=cpu_kind())
    print(json.dumps(result))


if __name__ == "__main__":
    main(parse_args())
