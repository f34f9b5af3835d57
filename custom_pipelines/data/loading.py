"""Resolve `--dataset_name` / `--train_data_dir` to a `datasets.Dataset`, and turn it into training tensors."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .builtin import BUILTIN_DATASETS


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    *,
    split: str = "train",
    resolution: int | None = None,
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
):
    """Load images by built-in name (`digits`, `faces`, `photos`), saved-dataset folder, Hub id or imagefolder.

    Exactly one of `dataset_name` and `train_data_dir` must be given. Built-in datasets are resized to `resolution`
    here; every other source keeps its images as they are (the transform resizes them).
    """
    import datasets

    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("give exactly one of dataset_name and train_data_dir")
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"train_data_dir must be an existing folder of images, got {train_data_dir!r}")
        check_metadata_paths(train_data_dir)
        return datasets.load_dataset("imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir)
    if dataset_name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[dataset_name](resolution)
    if os.path.isdir(dataset_name):
        loaded = datasets.load_from_disk(dataset_name)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    try:
        return datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)
    except Exception as err:  # the hub/offline errors vary by version; the user needs the options, not the trace
        raise ValueError(
            f"dataset_name={dataset_name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), "
            f"a local saved dataset folder, or a loadable Hub dataset ({type(err).__name__}: {err})"
        ) from err


METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def check_metadata_paths(data_dir: str) -> None:
    """Every `file_name` of an imagefolder's metadata.jsonl / metadata.csv must name a file inside `data_dir`: an
    absolute path or one that climbs out with `..` is refused, naming the file and the line."""
    import csv
    import json

    root = os.path.realpath(data_dir)
    for folder, _, files in os.walk(data_dir):
        for name in files:
            if name not in METADATA_FILES:
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8", newline="") as f:
                if name.endswith(".jsonl"):
                    rows = [(i, json.loads(line)) for i, line in enumerate(f, 1) if line.strip()]
                else:
                    rows = [(i, row) for i, row in enumerate(csv.DictReader(f), 2)]
            for line, row in rows:
                file_name = row.get("file_name") if isinstance(row, dict) else None
                if not isinstance(file_name, str):
                    continue  # datasets' own error names a missing file_name
                target = os.path.realpath(os.path.join(folder, file_name))
                if os.path.isabs(file_name) or os.path.commonpath([root, target]) != root:
                    raise ValueError(
                        f"{path} line {line}: file_name {file_name!r} points outside train_data_dir {data_dir!r}; "
                        "metadata may only name files inside the folder"
                    )


def filter_classes(dataset, label_column: str, class_filter: Sequence[int]):
    """Keep only rows whose label is in `class_filter` (e.g. digits 0–4 to pre-train, 5–9 to fine-tune)."""
    if label_column not in dataset.column_names:
        raise ValueError(f"class_filter needs a label column, but the dataset has no {label_column!r} column")
    wanted = set(int(c) for c in class_filter)
    kept = dataset.filter(lambda row: row[label_column] in wanted)
    if len(kept) == 0:
        raise ValueError(f"class_filter={sorted(wanted)} keeps no example of the dataset")
    return kept


def item_generator(seed: int, epoch: int, index: int, num_items: int) -> torch.Generator:
    """The generator of item `index` of a `num_items`-item dataset in `epoch`: all of an item's randomness (crop,
    flip, a partner draw) comes from it, so an item is the same whichever process or dataloader worker reads it, in
    whatever order, and after a resume; it differs between epochs and seeds."""
    key = (int(seed) * 1_000_003 + int(epoch)) * (int(num_items) + 1) + int(index)
    return torch.Generator().manual_seed(key % (2**63))


class ImageTransform:
    """PIL image → float tensor [C, H, W] in [-1, 1]: resize the short side, crop square, optional random h-flip.

    Randomness (crop offset, flip) comes from the `torch.Generator` given at construction, so a seeded run is
    reproducible. `channels` is 1 (grayscale) or 3 (RGB); images are converted to that mode first.
    """

    def __init__(
        self,
        resolution: int,
        channels: int = 3,
        center_crop: bool = True,
        random_flip: bool = False,
        generator: torch.Generator | None = None,
    ):
        if resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.resolution, self.channels = resolution, channels
        self.center_crop, self.random_flip = center_crop, random_flip
        self.generator = generator

    def _rand(self, generator: torch.Generator | None = None) -> float:
        return torch.rand((), generator=generator or self.generator).item()

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """`generator`, when given, replaces the transform's own for this image's crop and flip."""
        return self.maybe_flip(self.resize_and_crop(image, generator), generator)

    def resize_and_crop(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """The geometric part: resize the short side, crop (centered, or at a random offset), scale to [-1, 1]."""
        image = image.convert("L" if self.channels == 1 else "RGB")
        w, h = image.size
        scale = self.resolution / min(w, h)
        if scale != 1:
            new_size = (max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale)))
            image = image.resize(new_size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
        w, h = image.size
        if self.center_crop:
            left, top = (w - self.resolution) // 2, (h - self.resolution) // 2
        else:
            left = int(self._rand(generator) * (w - self.resolution + 1))
            top = int(self._rand(generator) * (h - self.resolution + 1))
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        tensor = torch.from_numpy(array).reshape(self.resolution, self.resolution, self.channels).permute(2, 0, 1)
        return tensor.contiguous()

    def maybe_flip(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """With `random_flip`, mirror left-right with probability 1/2 (one draw per image); else `tensor` as is."""
        if self.random_flip and self._rand(generator) < 0.5:
            return tensor.flip(-1)  # a new, contiguous tensor
        return tensor
