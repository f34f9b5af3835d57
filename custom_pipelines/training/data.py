"""Datasets → DataLoaders: any dataset with its own collate, or images → {"pixel_values": [B, C, H, W] in [-1, 1],
"labels": [B] (when the dataset has them)}."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from accelerate.utils import parse_flag_from_env

from custom_pipelines.data import ImageTransform, filter_classes, load_image_dataset
from custom_pipelines.data.loading import item_generator

from .streaming import STREAMING_SCRIPTS


def load_train_dataset(args, resolution: int):
    if getattr(args, "streaming", False):
        raise ValueError(
            "--streaming / --train_shards: this training script reads its data as a map-style dataset, which does not "
            f"stream yet; {', '.join(STREAMING_SCRIPTS)} stream"
        )
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
        num_workers=resolve_num_workers(args.dataloader_num_workers),
        # workers are made anew each epoch (not persistent), so they hold the dataset after its set_epoch
        persistent_workers=False,
        pin_memory=_on_cuda(),
        generator=torch.Generator().manual_seed(args.seed),
    )


def _on_cuda() -> bool:
    """Training runs on a CUDA device (not `ACCELERATE_USE_CPU`): batches are then pinned for the copy to it."""
    return torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")


def resolve_num_workers(requested: int | None) -> int:
    """`--dataloader_num_workers`, or its default: 0 when training on the CPU (benchmarks/dataloader_workers.py, 2
    cores: 2 workers read PNGs 1.42× faster, but a training step took the same time with 0 and 2, the workers taking
    the cores it computes on), else min(4, CPU cores per local process − 1), so a GPU is not fed by one core."""
    if requested is not None:
        return requested
    if not _on_cuda():
        return 0
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(4, (os.cpu_count() or 1) // local_processes - 1))


# A dataset whose transformed tensors fit in this many bytes is transformed once and kept in memory (per process).
IMAGE_CACHE_BYTES = 256 * 2**20


def make_image_dataloader(args, dataset, resolution: int, channels: int) -> torch.utils.data.DataLoader:
    """An image dataset (+ labels when it has `--label_column`) → batches of `pixel_values` in [-1, 1].

    Item i's random crop and flip come from its own generator, seeded by (--seed, epoch, i), so the batches are the
    same with any `--dataloader_num_workers` and after a resume. With a center crop (no random crop) the resize +
    crop + scaling is the same every time an image is read, so a small dataset read more than once is transformed
    once (`TransformedImages`); only the flip is drawn per read. The batches are the same tensors either way."""
    check_image_channels(args, dataset, channels)
    transform = ImageTransform(resolution, channels, center_crop=args.center_crop, random_flip=args.random_flip)
    labels = args.label_column if args.label_column in dataset.column_names else None
    items_class = TransformedImages if _worth_caching(args, dataset, resolution, channels) else ImageItems
    return make_dataloader(args, items_class(dataset, transform, args.image_column, labels, args.seed), _collate)


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
            source = args.train_data_dir or args.dataset_name or getattr(args, "train_shards", None)
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
    if "captions" in examples[0]:
        batch["captions"] = [e["captions"] for e in examples]
    return batch


def _worth_caching(args, dataset, resolution: int, channels: int) -> bool:
    """Center-cropped (deterministic geometry), small enough, and read more than once in this run."""
    if not args.center_crop or len(dataset) * channels * resolution**2 * 4 > IMAGE_CACHE_BYTES:
        return False
    if args.max_train_steps is None:
        return args.num_epochs > 1
    # each process transforms the whole dataset once and reads this many examples itself
    return args.max_train_steps * args.train_batch_size * args.gradient_accumulation_steps > len(dataset)


class ImageItems(torch.utils.data.Dataset):
    """The images of `dataset` (+ labels) as `{"pixel_values": [C, H, W] in [-1, 1], "labels": int}`, transformed
    at each read. Item `index`'s randomness (random crop, flip) is drawn from `item_generator(seed, epoch, index)`,
    not from a generator shared by the reads: a dataloader worker holds a copy of the dataset, so a shared generator
    would replay the same draws in every worker, and the batches would depend on the number of workers. The
    trainer calls `set_epoch` before each epoch (a new worker copy is made per epoch: workers are not persistent)."""

    def __init__(self, dataset, transform: ImageTransform, image_column: str, label_column: str | None, seed: int = 0):
        self.dataset, self.transform, self.image_column, self.seed, self.epoch = (
            dataset,
            transform,
            image_column,
            seed,
            0,
        )
        self.labels = list(dataset[label_column]) if label_column else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def pixels(self, index: int, generator: torch.Generator) -> torch.Tensor:
        return self.transform(self.dataset[index][self.image_column], generator)

    def __getitem__(self, index: int) -> dict:
        item = {"pixel_values": self.pixels(index, item_generator(self.seed, self.epoch, index, len(self)))}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


class TransformedImages(ImageItems):
    """`ImageItems` of a center-cropped dataset, resized, cropped and scaled once and held as one tensor; only the
    flip (if on) is drawn at each read, from the item's generator as on the fly. For a small dataset trained over
    many epochs (the built-in digits: 1797 × 1×16×16) a read is then an index instead of a PNG decode and a resize
    (≈ 8 ms of a 170 ms digits step on 2 CPU cores)."""

    def __init__(self, dataset, transform: ImageTransform, image_column: str, label_column: str | None, seed: int = 0):
        super().__init__(dataset, transform, image_column, label_column, seed)
        images = (dataset[i][image_column] for i in range(len(dataset)))  # one decoded image at a time
        self.pixel_values = torch.stack([transform.resize_and_crop(image) for image in images])
        self.dataset = None  # the tensors are all that is read from now on

    def __len__(self) -> int:
        return len(self.pixel_values)

    def pixels(self, index: int, generator: torch.Generator) -> torch.Tensor:
        return self.transform.maybe_flip(self.pixel_values[index], generator)


def make_streaming_dataloader(args, resolution: int, channels: int, stream=None, to_item=None, collate_fn=None):
    """`--streaming` / `--train_shards` images → (the rank's `StreamingExamples`, a DataLoader over them). `stream`:
    a `datasets.IterableDataset` the script prepared from `load_stream(args)` (a caption column added, a held-out
    part skipped); default: `load_stream(args)` itself. `to_item(example, generator)` and `collate_fn` replace the
    image items and their collate (LR/HR pairs cut from each streamed image)."""
    from accelerate import PartialState

    from .streaming import (
        UNDECODABLE,
        StreamingExamples,
        decode_image,
        load_stream,
        streaming_image_items,
    )

    stream = load_stream(args) if stream is None else stream
    if args.class_filter:
        keep, column = set(args.class_filter), args.label_column
        stream = stream.filter(lambda example: example[column] in keep)
    if args.max_train_samples is not None:
        stream = stream.take(args.max_train_samples)
    probe = []
    for example in stream.take(CHANNEL_PROBE_IMAGES):
        try:
            probe.append({args.image_column: decode_image(example[args.image_column])})
        except UNDECODABLE:  # counted when trained on
            continue
    if not probe:
        raise ValueError(
            f"the training stream {args.train_shards or args.dataset_name or args.train_data_dir!r} is empty"
        )
    check_image_channels(args, probe, channels)
    transform = ImageTransform(resolution, channels, center_crop=args.center_crop, random_flip=args.random_flip)
    state, workers = PartialState(), resolve_num_workers(args.dataloader_num_workers)
    share = {"rank": state.process_index, "world_size": state.num_processes, "num_workers": workers}
    if to_item is None:
        items = streaming_image_items(args, stream, transform, **share)
    else:
        items = StreamingExamples(
            stream, to_item, seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size,
            batch_size=args.train_batch_size, **share,
        )  # fmt: skip
    return items, stream_loader(args, items, collate_fn or _collate)


def stream_loader(args, items, collate_fn) -> torch.utils.data.DataLoader:
    """A DataLoader over a rank's `StreamingExamples`: not prepared by accelerate (datasets already gave this rank
    its share, and accelerate would split it again); full batches only, so every rank's step has the same size."""
    from .streaming import collate_stream

    loader = torch.utils.data.DataLoader(
        items,
        batch_size=args.train_batch_size,
        drop_last=True,
        collate_fn=collate_stream(collate_fn),
        num_workers=resolve_num_workers(args.dataloader_num_workers),
        pin_memory=_on_cuda(),
        # its own generator: every `iter(loader)` draws a base seed, which would otherwise come from the global RNG
        # that the training noise draws from, and a resumed run starts one more iterator than the straight one
        generator=torch.Generator().manual_seed(args.seed),
    )
    return loader
