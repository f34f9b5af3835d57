"""Datasets → DataLoaders: any dataset with its own collate, or images → {"pixel_values": [B, C, H, W] in [-1, 1],
"labels": [B] (when the dataset has them)}."""

from __future__ import annotations

from collections.abc import Callable

import torch

from custom_pipelines.data import ImageTransform, filter_classes, load_image_dataset


def load_train_dataset(args, resolution: int):
    dataset = load_image_dataset(
        args.dataset_name,
        args.train_data_dir,
        resolution=resolution,
        dataset_config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
    )
    if args.image_column not in dataset.column_names:
        raise ValueError(f"--image_column={args.image_column!r} is not a column of the dataset {dataset.column_names}")
    if args.class_filter:
        dataset = filter_classes(dataset, args.label_column, args.class_filter)
    if args.max_train_samples is not None:
        dataset = dataset.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(dataset))))
    return dataset


def make_dataloader(args, dataset, collate_fn: Callable[[list], dict]) -> torch.utils.data.DataLoader:
    """Any map-style dataset, shuffled by a seeded generator (accelerate's seedable sampler then gives every
    epoch and a resumed run the same order), `--train_batch_size`, full batches only once there are enough."""
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=len(dataset) >= args.train_batch_size,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


# A dataset whose transformed tensors fit in this many bytes is transformed once and kept in memory (per process).
IMAGE_CACHE_BYTES = 256 * 2**20


def make_image_dataloader(args, dataset, resolution: int, channels: int) -> torch.utils.data.DataLoader:
    """An image dataset (+ labels when it has `--label_column`) → batches of `pixel_values` in [-1, 1].

    With a center crop (no random crop) the resize + crop + scaling is the same every time an image is read, so a
    small dataset read more than once is transformed once (`TransformedImages`); only the random flip is drawn per
    read. The batches are the same tensors either way."""
    check_image_channels(args, dataset, channels)
    transform = ImageTransform(
        resolution,
        channels,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        generator=torch.Generator().manual_seed(args.seed),
    )
    has_labels = args.label_column in dataset.column_names
    if _worth_caching(args, dataset, resolution, channels):
        labels = args.label_column if has_labels else None
        return make_dataloader(args, TransformedImages(dataset, transform, args.image_column, labels), _collate)

    def to_tensors(rows: dict) -> dict:
        out = {"pixel_values": [transform(image) for image in rows[args.image_column]]}
        if has_labels:
            out["labels"] = rows[args.label_column]
        return out

    return make_dataloader(args, dataset.with_transform(to_tensors), _collate)


# how many images decide whether a dataset is in colour (read from the start of the dataset)
CHANNEL_PROBE_IMAGES = 16


def has_colour(image) -> bool:
    """True when a PIL image holds colour: an RGB(A)/palette/CMYK image whose channels differ somewhere (an RGB
    file of grey pixels, e.g. digits saved as RGB PNGs, is grey). Checked on a thumbnail, so large photos cost
    little."""
    import numpy as np

    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    small = image.copy()
    small.thumbnail((64, 64))
    rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() > 2 or np.abs(rgb[..., 1] - rgb[..., 2]).max() > 2)


def check_image_channels(args, dataset, channels: int, flag: str = "--model_config", model: str | None = None) -> None:
    """Colour training images for a 1-channel model would be turned grey without a word: refuse, naming `flag` (the
    option that picks the model's channels) and the variants of the same family that take colour. Grey images for
    a 3-channel model lose nothing (they are replicated to RGB) and pass."""
    if channels != 1 or len(dataset) == 0:
        return
    if model is None:
        model = getattr(args, "pretrained_model_name_or_path", None) or getattr(args, "model_config", None)
    for i in range(min(CHANNEL_PROBE_IMAGES, len(dataset))):
        if has_colour(dataset[i][args.image_column]):
            source = args.train_data_dir or args.dataset_name
            raise ValueError(
                f"the training images of {source!r} are in colour (image {i}), but the model ({model}) takes 1 "
                f"channel, so training would turn them grey: pick a 3-channel {flag}{_rgb_hint(model)}, or convert "
                "the images to grayscale first if grey is what you want"
            )


def _rgb_hint(model_config: str | None) -> str:
    from custom_pipelines.hub.configs import variants_with_channels

    family = (model_config or "").split("-")[0]
    names = variants_with_channels(3, prefix=f"{family}-") if family else []
    return f" (hub_configs variants: {', '.join(names)})" if names else ""


def _collate(examples: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    return batch


def _worth_caching(args, dataset, resolution: int, channels: int) -> bool:
    """Center-cropped (deterministic geometry), small enough, and read more than once in this run."""
    if not args.center_crop or len(dataset) * channels * resolution**2 * 4 > IMAGE_CACHE_BYTES:
        return False
    if args.max_train_steps is None:
        return args.num_epochs > 1
    # each process transforms the whole dataset once and reads this many examples itself
    return args.max_train_steps * args.train_batch_size * args.gradient_accumulation_steps > len(dataset)


class TransformedImages(torch.utils.data.Dataset):
    """The images of `dataset` resized, cropped and scaled once, held as one tensor; `transform`'s random flip (if
    on) is still drawn at each read, from its generator, in the order the examples are read, as it would be on
    the fly. For a small dataset trained over many epochs (the built-in digits: 1797 × 1×16×16) a read is then an
    index instead of a PNG decode and a resize (≈ 8 ms of a 170 ms digits step on 2 CPU cores)."""

    def __init__(self, dataset, transform: ImageTransform, image_column: str, label_column: str | None):
        self.transform = transform
        images = (dataset[i][image_column] for i in range(len(dataset)))  # one decoded image at a time
        self.pixel_values = torch.stack([transform.resize_and_crop(image) for image in images])
        self.labels = list(dataset[label_column]) if label_column else None

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict:
        item = {"pixel_values": self.transform.maybe_flip(self.pixel_values[index])}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item
