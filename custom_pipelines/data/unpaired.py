"""Two image domains for unpaired translation (CycleGAN): where they come from, a held-out split, and the batches.

Sources (`load_unpaired_domains`):
- a built-in stand-in pair that exists offline (`UNPAIRED_BUILTINS`): `digits-thick` — scikit-learn's digits (A)
  vs stroke-thickened digits (B, grey-scale morphological dilation) — and `photos-posterized` — random crops of the
  bundled photos (A) vs posterised crops (B). The two domains are built from disjoint halves of the source images,
  shuffled independently, so no B image is the translation of an A image: the data is truly unpaired;
- a folder in junyanz's layout: `trainA/`, `trainB/` (and `testA/`, `testB/` as the held-out split if present);
- one dataset (saved folder or Hub id) with a domain column (`domain_column`, `domain_a`, `domain_b`);
- two datasets: `dataset_name` is A and `dataset_name_b` is B.
Without a test split, a seeded `holdout_fraction` of each domain is held out for evaluation.

Batches (`UnpairedDataset.collate`): `{"pixel_values_a", "pixel_values_b"}` in [-1, 1]; the epoch walks domain A in
the sampler's (seeded) order and pairs every A image with a random B image. The draw (and any random crop or flip)
comes from a generator seeded by (seed, epoch, index), not from a running RNG: the dataloader prefetches a batch
ahead of the step, so a running RNG's checkpointed state would be one batch off and a resumed run would pair other
images. Pairs differ between epochs (the trainer calls `set_epoch`) and a resumed run draws the same ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .loading import ImageTransform, item_generator

DEFAULT_HOLDOUT_FRACTION = 0.1
TRAIN_A, TRAIN_B, TEST_A, TEST_B = "trainA", "trainB", "testA", "testB"  # junyanz's folder names


@dataclass
class UnpairedDomains:
    """Four `datasets.Dataset`s of images (column `image`): the training and held-out images of A and of B."""

    train_a: object
    train_b: object
    test_a: object
    test_b: object
    name_a: str = "A"
    name_b: str = "B"

    def __post_init__(self):
        for name in ("train_a", "train_b", "test_a", "test_b"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"the unpaired data has no {name} images")


# ----- the offline stand-in domains -------------------------------------------------------------------------------
def thicken_strokes(image: Image.Image, size: int = 3) -> Image.Image:
    """Grey-scale morphological dilation with a `size`×`size` square: every stroke grows by (size − 1) pixels."""
    from scipy.ndimage import grey_dilation

    return Image.fromarray(grey_dilation(np.asarray(image), size=(size, size)))


def posterize(image: Image.Image, bits: int = 2) -> Image.Image:
    """Keep `bits` bits per channel (2**bits levels): flat colour regions with hard edges."""
    return ImageOps.posterize(image.convert("RGB"), bits)


def _split_in_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


def _holdout(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_test = max(1, round(len(indices) * fraction))
    return indices[n_test:], indices[:n_test]


def image_dataset(images: list[Image.Image]):
    """Decoded images as a `datasets.Dataset` with one `image` column (what `ImageDomain` reads)."""
    import datasets

    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


def digits_thick_domains(
    resolution: int | None = 16, seed: int = 0, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
) -> UnpairedDomains:
    """A: scikit-learn's handwritten digits (upscaled to `resolution`); B: other digits, strokes thickened by a 3×3
    dilation at that resolution. 898 / 899 source digits per domain, `holdout_fraction` of each held out."""
    from .builtin import digits_dataset

    digits = digits_dataset(resolution)
    half_a, half_b = _split_in_halves(len(digits), seed)
    (train_a, test_a), (train_b, test_b) = _holdout(half_a, holdout_fraction), _holdout(half_b, holdout_fraction)

    def domain(indices, thick: bool):
        images = [digits[int(i)]["image"] for i in indices]
        return image_dataset([thicken_strokes(im) for im in images] if thick else images)

    return UnpairedDomains(
        domain(train_a, False), domain(train_b, True), domain(test_a, False), domain(test_b, True), "thin", "thick"
    )


def photos_posterized_domains(
    resolution: int | None = 32, seed: int = 0, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
) -> UnpairedDomains:
    """A: random `resolution`² crops of the bundled photos (from a 4× downscale); B: posterised (2 bits) crops
    drawn independently. 256 crops per domain, `holdout_fraction` held out."""
    from .builtin import photos_dataset

    side = resolution or 32
    photos = [row["image"].convert("RGB") for row in photos_dataset(None)]
    photos = [p.resize((max(side, p.width // 4), max(side, p.height // 4)), Image.Resampling.LANCZOS) for p in photos]
    rng = np.random.default_rng(seed)

    def crops(count: int) -> list[Image.Image]:
        out = []
        for _ in range(count):
            photo = photos[rng.integers(len(photos))]
            left, top = rng.integers(photo.width - side + 1), rng.integers(photo.height - side + 1)
            out.append(photo.crop((int(left), int(top), int(left) + side, int(top) + side)))
        return out

    n, n_test = 256, max(1, round(256 * holdout_fraction))
    a, b = crops(n), [posterize(c) for c in crops(n)]
    return UnpairedDomains(
        image_dataset(a[n_test:]),
        image_dataset(b[n_test:]),
        image_dataset(a[:n_test]),
        image_dataset(b[:n_test]),
        "photo",
        "posterized",
    )


UNPAIRED_BUILTINS: dict[str, Callable[..., UnpairedDomains]] = {
    "digits-thick": digits_thick_domains,
    "photos-posterized": photos_posterized_domains,
}


# ----- users' data ------------------------------------------------------------------------------------------------
def _split_dataset(dataset, fraction: float, seed: int):
    """(train, held out) of a dataset without a test split: a seeded `fraction` held out."""
    split = dataset.train_test_split(test_size=max(1, round(len(dataset) * fraction)), seed=seed)
    return split["train"], split["test"]


def _folder_domains(root: str, image_column: str, fraction: float, seed: int) -> UnpairedDomains:
    import datasets

    def folder(name: str):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            return None
        loaded = datasets.load_dataset("imagefolder", data_dir=path, split="train")
        return loaded.rename_column(image_column, "image") if image_column != "image" else loaded

    train_a, train_b = folder(TRAIN_A), folder(TRAIN_B)
    if train_a is None or train_b is None:
        raise ValueError(
            f"train_data_dir must hold the folders {TRAIN_A}/ and {TRAIN_B}/ (junyanz layout), got {root!r}"
        )
    test_a, test_b = folder(TEST_A), folder(TEST_B)
    if test_a is None:
        train_a, test_a = _split_dataset(train_a, fraction, seed)
    if test_b is None:
        train_b, test_b = _split_dataset(train_b, fraction, seed + 1)
    return UnpairedDomains(train_a, train_b, test_a, test_b)


def _load_dataset(name: str, split: str = "train"):
    import datasets

    if os.path.isdir(name):
        loaded = datasets.load_from_disk(name)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(name, split=split)


def _domain_value(dataset, column: str, value):
    """A domain value as stored in the column: a ClassLabel column also takes the class name."""
    feature = dataset.features[column]
    if hasattr(feature, "str2int") and isinstance(value, str) and not value.lstrip("-").isdigit():
        return feature.str2int(value) if value in feature.names else value  # an unknown name matches no row
    stored = dataset[0][column]
    return type(stored)(value) if isinstance(stored, (int, float)) and not isinstance(stored, bool) else value


def load_unpaired_domains(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    *,
    resolution: int | None = None,
    dataset_name_b: str | None = None,
    domain_column: str | None = None,
    domain_a=None,
    domain_b=None,
    image_column: str = "image",
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
) -> UnpairedDomains:
    """The two domains (train and held out) from one of the sources in the module docstring."""
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("give exactly one of dataset_name and train_data_dir")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if train_data_dir is not None:
        return _folder_domains(train_data_dir, image_column, holdout_fraction, seed)
    if dataset_name in UNPAIRED_BUILTINS:
        return UNPAIRED_BUILTINS[dataset_name](resolution, seed=seed, holdout_fraction=holdout_fraction)
    if dataset_name_b is None and domain_column is None:
        raise ValueError(
            f"dataset_name={dataset_name!r} is not a built-in pair ({', '.join(UNPAIRED_BUILTINS)}): give "
            "dataset_name_b (domain B's dataset) or domain_column with domain_a and domain_b"
        )
    dataset = _load_dataset(dataset_name)
    if image_column not in dataset.column_names:
        raise ValueError(f"image_column={image_column!r} is not a column of {dataset_name!r} {dataset.column_names}")
    if dataset_name_b is not None:
        other = _load_dataset(dataset_name_b)
        if image_column not in other.column_names:
            raise ValueError(f"image_column={image_column!r} is not a column of {dataset_name_b!r}")
        a, b = dataset.select_columns([image_column]), other.select_columns([image_column])
    else:
        if domain_column not in dataset.column_names:
            raise ValueError(f"domain_column={domain_column!r} is not a column of {dataset.column_names}")
        if domain_a is None or domain_b is None:
            raise ValueError("domain_column needs both domain_a and domain_b (the column's values of each domain)")
        value_a, value_b = (
            _domain_value(dataset, domain_column, domain_a),
            _domain_value(dataset, domain_column, domain_b),
        )
        a = dataset.filter(lambda row: row[domain_column] == value_a).select_columns([image_column])
        b = dataset.filter(lambda row: row[domain_column] == value_b).select_columns([image_column])
        for name, value, part in (("domain_a", domain_a, a), ("domain_b", domain_b, b)):
            if len(part) == 0:
                raise ValueError(f"{name}={value!r} matches no row of the column {domain_column!r}")
    if image_column != "image":
        a, b = a.rename_column(image_column, "image"), b.rename_column(image_column, "image")
    (train_a, test_a), (train_b, test_b) = (
        _split_dataset(a, holdout_fraction, seed),
        _split_dataset(b, holdout_fraction, seed + 1),
    )
    return UnpairedDomains(train_a, train_b, test_a, test_b)


# ----- tensors and batches ----------------------------------------------------------------------------------------
class ImageDomain(torch.utils.data.Dataset):
    """A dataset of images (column `image`) as tensors [C, H, W] in [-1, 1] through an `ImageTransform`."""

    def __init__(self, dataset, transform: ImageTransform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get(index)

    def get(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image `index`; random crops/flips from `generator` when given, else the transform's own."""
        return self.transform(self.dataset[int(index)]["image"], generator=generator)

    def first(self, count: int) -> torch.Tensor:
        """The first `count` images (or all, if fewer) as one batch [N, C, H, W]: fixed validation inputs."""
        return torch.stack([self[i] for i in range(min(count, len(self)))])


class UnpairedDataset(torch.utils.data.Dataset):
    """Domain A's images one per item (an epoch is len(A) items), each with a random B image (see the module doc)."""

    def __init__(self, domain_a: ImageDomain, domain_b: ImageDomain, seed: int = 0):
        if len(domain_a) == 0 or len(domain_b) == 0:
            raise ValueError(f"both domains need images, got {len(domain_a)} (A) and {len(domain_b)} (B)")
        self.domain_a, self.domain_b, self.seed, self.epoch = domain_a, domain_b, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.domain_a)

    def item_generator(self, index: int) -> torch.Generator:
        """The generator of item `index` in the current epoch: the same in every process and after a resume."""
        return item_generator(self.seed, self.epoch, index, len(self.domain_a))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = self.item_generator(index)
        pick = int(torch.randint(len(self.domain_b), (), generator=generator))
        return self.domain_a.get(index, generator), self.domain_b.get(pick, generator)

    @staticmethod
    def collate(examples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        return {
            "pixel_values_a": torch.stack([a for a, _ in examples]),
            "pixel_values_b": torch.stack([b for _, b in examples]),
        }


def unpaired_training_data(
    domains: UnpairedDomains, resolution: int, channels: int, *, random_flip: bool = False, seed: int = 0
) -> tuple[UnpairedDataset, ImageDomain, ImageDomain]:
    """(training dataset with its `collate`, held-out A, held-out B) at `resolution` and `channels` (1 or 3).

    Training images get a random crop after the resize when larger (and flips with `random_flip`); held-out ones
    are centre-cropped, unflipped."""

    def transform(train: bool, offset: int) -> ImageTransform:
        generator = torch.Generator().manual_seed(seed + offset)
        return ImageTransform(resolution, channels, center_crop=not train, random_flip=train and random_flip,
                              generator=generator)  # fmt: skip

    train = UnpairedDataset(
        ImageDomain(domains.train_a, transform(True, 0)), ImageDomain(domains.train_b, transform(True, 1)), seed=seed
    )
    return train, ImageDomain(domains.test_a, transform(False, 2)), ImageDomain(domains.test_b, transform(False, 3))
