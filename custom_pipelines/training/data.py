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


def make_image_dataloader(args, dataset, resolution: int, channels: int) -> torch.utils.data.DataLoader:
    """An image dataset (+ labels when it has `--label_column`) → batches of `pixel_values` in [-1, 1]."""
    transform = ImageTransform(
        resolution,
        channels,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        generator=torch.Generator().manual_seed(args.seed),
    )
    has_labels = args.label_column in dataset.column_names

    def to_tensors(rows: dict) -> dict:
        out = {"pixel_values": [transform(image) for image in rows[args.image_column]]}
        if has_labels:
            out["labels"] = rows[args.label_column]
        return out

    def collate(examples: list[dict]) -> dict:
        batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
        if has_labels:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch

    return make_dataloader(args, dataset.with_transform(to_tensors), collate)
