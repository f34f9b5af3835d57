"""Datasets that ship inside installed packages, exposed as `datasets.Dataset` with `image` (+ `label`) columns.

Nothing here touches the network: scikit-learn and scikit-image carry the pixels. Images are upscaled to the
requested resolution once, here, so every training script sees ordinary PIL images like a Hub dataset's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _to_pil(array_01: np.ndarray, resolution: int | None) -> Image.Image:
    """Float array in [0, 1] (H, W) or (H, W, 3) → uint8 PIL image, bilinearly resized to a square side."""
    image = Image.fromarray(np.clip(np.rint(array_01 * 255.0), 0, 255).astype(np.uint8))
    if resolution is not None and image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return image


def digits_dataset(resolution: int | None = 16):
    """scikit-learn's 1797 handwritten digits (8×8, pixel values 0..16, 10 classes) as a grayscale image dataset."""
    import datasets
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = [_to_pil(img / 16.0, resolution) for img in bunch.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
    return datasets.Dataset.from_dict({"image": images, "label": bunch.target.tolist()}, features=features)


def faces_dataset(resolution: int | None = 32):
    """scikit-image's `lfw_subset()`: 200 grayscale face crops (25×25); the first 100 are faces, label 1."""
    import datasets
    from skimage.data import lfw_subset

    crops = lfw_subset()
    images = [_to_pil(img, resolution) for img in crops]
    labels = [1] * 100 + [0] * (len(crops) - 100)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["other", "face"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).filter(
        lambda row: row["label"] == 1
    )


def photos_dataset(resolution: int | None = None):
    """The RGB photos bundled with scikit-image (astronaut, chelsea, coffee, rocket) and scikit-learn (2 photos)."""
    import datasets
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    arrays = [getattr(skdata, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    arrays += list(load_sample_images().images)
    images = [_to_pil(np.asarray(a, dtype=np.float64) / 255.0, resolution) for a in arrays]
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


BUILTIN_DATASETS: dict[str, Callable] = {"digits": digits_dataset, "faces": faces_dataset, "photos": photos_dataset}
