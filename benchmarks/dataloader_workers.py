"""Images/s of the trainer's data path with 0, 1 and 2 dataloader workers, on a folder of 64×64 PNG crops.

    python benchmarks/dataloader_workers.py --num_images 2048 --workers 0 1 2 [--json PATH]

The crops are cut from scikit-image's bundled photos (astronaut, coffee, chelsea, rocket, ...) into a temporary
imagefolder, loaded as the trainer loads `--train_data_dir` (datasets' imagefolder), then read through
`make_image_dataloader` at resolution 64 with random crops and flips (on the fly: the in-memory cache is off for
random crops), batch 64, for two epochs after one warm-up epoch. Each worker count runs in the same process, one
after the other, so the ratios compare like with like; the CPU kind is printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from custom_pipelines.data import load_image_dataset
from custom_pipelines.io import write_json
from custom_pipelines.precision import cpu_capability
from custom_pipelines.training import add_common_args
from custom_pipelines.training.data import make_image_dataloader

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field")


def write_crops(folder: str, num_images: int, size: int = 64, seed: int = 0) -> None:
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB")) for name in PHOTOS]
    for i in range(num_images):
        photo = photos[i % len(photos)]
        top = int(rng.integers(0, photo.shape[0] - size))
        left = int(rng.integers(0, photo.shape[1] - size))
        Image.fromarray(photo[top : top + size, left : left + size]).save(os.path.join(folder, f"{i:05d}.png"))


def images_per_second(dataset, workers: int, epochs: int = 2) -> float:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_common_args(parser)
    argv = ["--output_dir", "unused", "--train_batch_size", "64", "--random_flip", "--no-center_crop",
            "--dataloader_num_workers", str(workers), "--num_epochs", str(epochs)]  # fmt: skip
    loader = make_image_dataloader(parser.parse_args(argv), dataset, resolution=64, channels=3)
    for _ in loader:  # warm-up: worker start, decoder caches
        pass
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            seen += batch["pixel_values"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_images", type=int, default=2048)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the data path is per-sample Python/PIL work; threads only contend with workers
    with tempfile.TemporaryDirectory() as folder:
        write_crops(folder, args.num_images)
        dataset = load_image_dataset(train_data_dir=folder)
        rates = {workers: images_per_second(dataset, workers) for workers in args.workers}
    cpu = f"{platform.processor() or platform.machine()}, {cpu_capability()}, {os.cpu_count()} cores"
    print(f"| workers | images/s | vs 0 workers |   ({args.num_images} 64×64 PNGs, {cpu})")
    print("|---|---|---|")
    for workers, rate in rates.items():
        print(f"| {workers} | {rate:.0f} | {rate / rates[args.workers[0]]:.2f}× |")
    if args.json:
        write_json(args.json, {"cpu": cpu, "num_images": args.num_images, "images_per_second": rates})


if __name__ == "__main__":
    main()
