"""What one request may ask of the app: images per request, steps, upload size and pixels, queue size.

Every limit is a command-line flag of `python -m custom_pipelines.app` and is shown next to its control; a request
past a limit is a ValueError naming the control, the range and the flag, answered in the page like any other bad
input. Uploads are checked from the file's header (`PIL.Image.open` is lazy) before anything decodes the pixels.
"""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass

import PIL.Image


@dataclass(frozen=True)
class Limits:
    """Per-request limits (defaults sized for a CPU machine serving a few users)."""

    max_images: int = 8  # images per request (--max_images)
    max_steps: int = 100  # denoising steps per request (--max_steps)
    max_upload_mb: float = 10.0  # size of an uploaded file (--max_upload_mb; Gradio refuses larger uploads too)
    max_pixels: int = 1024 * 1024  # pixels (height × width) of an uploaded image (--max_pixels)
    queue_size: int = 16  # requests waiting at once (--queue_size); more are refused with "queue full"
    concurrency: int = 1  # requests run at the same time (--concurrency): one at a time keeps a CPU responsive

    def __post_init__(self):
        for name in ("max_images", "max_steps", "max_pixels", "queue_size", "concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value!r}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max_upload_mb must be > 0, got {self.max_upload_mb!r}")

    def describe(self, steps: bool = True, uploads: bool = True) -> str:
        """One line for the page's header (only the limits that apply to its pages)."""
        parts = [f"at most {self.max_images} images"]
        if steps:
            parts.append(f"{self.max_steps} steps")
        text = "Limits per request: " + ", ".join(parts)
        if uploads:
            text += f", uploads up to {self.max_upload_mb:g} MB and {self.max_pixels:,} pixels"
        return text + f"; {self.queue_size} requests may wait."

    def check_num_images(self, num_images) -> int:
        return _check_range("num_images", num_images, 1, self.max_images, "--max_images")

    def check_steps(self, num_inference_steps) -> int:
        """0 or a negative count gets the pipelines' own message; a count past the app's limit names the flag."""
        from ..pipelines.utils import check_positive_int

        value = _as_int("num_inference_steps", num_inference_steps)
        check_positive_int("num_inference_steps", value)
        return _check_range("num_inference_steps", value, 1, self.max_steps, "--max_steps")

    def open_upload(self, path: str | os.PathLike, name: str = "image") -> PIL.Image.Image:
        """The uploaded file as a decoded L or RGB image, after checking its size in bytes and pixels."""
        path = os.fspath(path)
        label = os.path.basename(path)
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > self.max_upload_mb:
            raise ValueError(
                f"{name}: {label} is {size_mb:.1f} MB, more than the app's limit of {self.max_upload_mb:g} MB "
                "(--max_upload_mb)"
            )
        try:
            with warnings.catch_warnings():  # PIL warns of large images at open; the pixel limit below decides
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                image = PIL.Image.open(path)  # lazy: reads the header only
            with image:
                self.check_pixels(image.size, name)
                image.load()
                return image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
        except (OSError, PIL.Image.DecompressionBombError, SyntaxError) as err:
            raise ValueError(f"{name}: cannot read {label} as an image ({err})") from None

    def check_pixels(self, size: tuple[int, int], name: str = "image") -> None:
        width, height = size
        if width * height > self.max_pixels:
            raise ValueError(
                f"{name} is {width}×{height} = {width * height:,} pixels, more than the app's limit of "
                f"{self.max_pixels:,} pixels (--max_pixels)"
            )


def _as_int(name: str, value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _check_range(name: str, value, low: int, high: int, flag: str) -> int:
    value = _as_int(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}] (the app's {flag}), got {value}")
    return value


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    group = parser.add_argument_group("limits (shown in the page)")
    group.add_argument("--max_images", type=int, default=defaults.max_images, help="images per request")
    group.add_argument("--max_steps", type=int, default=defaults.max_steps, help="denoising steps per request")
    group.add_argument("--max_upload_mb", type=float, default=defaults.max_upload_mb, help="size of an upload")
    group.add_argument("--max_pixels", type=int, default=defaults.max_pixels, help="pixels of an uploaded image")
    group.add_argument("--queue_size", type=int, default=defaults.queue_size, help="requests that may wait")
    group.add_argument("--concurrency", type=int, default=defaults.concurrency, help="requests run at once")


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(
        max_images=args.max_images,
        max_steps=args.max_steps,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        queue_size=args.queue_size,
        concurrency=args.concurrency,
    )
