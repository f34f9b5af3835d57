"""The feature-extractor interface, the shared image preprocessing, and the real-data reference features.

Generated and real images go through the same steps before any network sees them: clamp to [0, 1], convert the
channels the extractor wants, quantise to 8 bits (as if saved to PNG, the protocol of the FID papers) and resize.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

# Resize and grayscale live in the pipelines layer (loss guidance needs them too); to_grayscale is re-exported.
from custom_pipelines.pipelines.utils import resize, to_grayscale  # noqa: F401

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 256 levels of an 8-bit PNG, so generated and stored real images match."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """`[B, 1 or 3, H, W]` → `[B, 3, H, W]` by repeating a single channel."""
    if images.shape[1] == 3:
        return images
    if images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")


def check_images(images: torch.Tensor) -> None:
    """Raise if `images` is not a float `[B, C, H, W]` tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape [B, C, H, W] with values in [0, 1], got {shape}")


class FeatureExtractor(ABC):
    """A network that maps images to feature vectors (and optionally class logits) for the metrics.

    Subclasses implement `forward_features(images) -> (features [B, D], logits [B, C] or None)` on images that
    `__call__` has already checked; `images` are float tensors in [0, 1] of shape `[B, C, H, W]` with any size and
    1 or 3 channels, and each extractor converts them the way its network was trained.

    Attributes:
        name (`str`): short name written into metric reports.
        feature_dim (`int`): D.
        has_logits (`bool`): whether `logits`/`probs` (and so the Inception Score) are available.
    """

    name: str = "features"
    feature_dim: int = 0
    has_logits: bool = False

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the network runs; inputs are moved there."""

    @abstractmethod
    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features `[B, D]` and logits `[B, C]` (or None) for checked images in [0, 1]."""

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass giving both features and logits (float32, on CPU)."""
        check_images(images)
        features, logits = self.forward_features(images.to(self.device, torch.float32))
        return features.float().cpu(), (logits.float().cpu() if logits is not None else None)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits `[B, C]`; raises if this extractor has no classifier head."""
        if not self.has_logits:
            raise ValueError(f"feature extractor {self.name!r} has no logits")
        return self.features_and_logits(images)[1]

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities `[B, C]` (softmax of `logits`)."""
        return self.logits(images).softmax(dim=-1)


def load_digits_images(split: str = "all", resolution: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits as `[N, 1, resolution, resolution]` floats in [0, 1] and their labels.

    Pixel values 0..16 are divided by 16, resized with bilinear antialiasing and quantised to 8 bits: exactly the
    preprocessing the digits classifier is trained with. `split` is `"all"` (1797 images), or `"train"`/`"test"`,
    the fixed `train_test_split(test_size=0.25, random_state=0)` the classifier uses (1347 / 450 images).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    if split == "train":
        images, _, labels, _ = train_test_split(images, labels, test_size=0.25, random_state=0)
    elif split == "test":
        _, images, _, labels = train_test_split(images, labels, test_size=0.25, random_state=0)
    elif split != "all":
        raise ValueError(f"split must be one of 'all', 'train', 'test', got {split!r}")
    tensor = resize(torch.from_numpy(images)[:, None], resolution)
    return quantize_uint8(tensor), torch.from_numpy(labels)


def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Image files directly inside `folder`, sorted by name so the order (and any subset) is reproducible."""
    if not os.path.isdir(folder):
        raise ValueError(f"reference folder {os.fspath(folder)!r} does not exist")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"reference folder {os.fspath(folder)!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [os.path.join(folder, f) for f in files]


def iterate_image_folder(
    folder: str | os.PathLike, resolution: int | None = None, num_samples: int | None = None, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """Yield `[B, 3, H, W]` batches in [0, 1] from a folder of images (RGB; grayscale files are repeated).

    Images are resized to `resolution` with bilinear antialiasing; without it, all images must share one size.
    """
    files = list_image_files(folder)[:num_samples]
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start : start + batch_size]:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
            batch.append(resize(tensor, resolution) if resolution is not None else tensor)
        sizes = {tuple(t.shape[-2:]) for t in batch}
        if len(sizes) > 1:
            raise ValueError(f"images in {os.fspath(folder)!r} have different sizes {sorted(sizes)}; pass resolution")
        yield torch.cat(batch)


def reference_features(
    name_or_dir: str | os.PathLike,
    extractor: FeatureExtractor,
    resolution: int | None = None,
    num_samples: int | None = None,
    batch_size: int = 256,
    split: str = "all",
) -> torch.Tensor:
    """Features `[N, D]` of the real reference images the generated ones are compared with.

    Args:
        name_or_dir (`str`): `"digits"` (scikit-learn's digits, resized from 8×8 to `resolution`) or a folder of
            image files (sorted by name).
        extractor (`FeatureExtractor`): the network giving the features.
        resolution (`int`, *optional*): size the real images are brought to before the extractor sees them; use the
            generated images' size. Required for `"digits"`.
        num_samples (`int`, *optional*): use only the first `num_samples` images (all by default).
        batch_size (`int`, defaults to 256): images per extractor call.
        split (`str`, defaults to `"all"`): for `"digits"`, `"all"`, `"train"` or `"test"`.
    """
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}")
    if os.fspath(name_or_dir) == "digits":
        if resolution is None:
            raise ValueError("resolution is required for the 'digits' reference (use the generated images' size)")
        images = load_digits_images(split, resolution)[0][:num_samples]
        batches: Iterator[torch.Tensor] = iter(torch.split(images, batch_size))
    elif os.path.isdir(name_or_dir):
        batches = iterate_image_folder(name_or_dir, resolution, num_samples, batch_size)
    else:
        raise ValueError(f"reference must be 'digits' or an existing folder of images, got {os.fspath(name_or_dir)!r}")
    return torch.cat([extractor(batch) for batch in batches])
