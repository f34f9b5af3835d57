"""Streaming training data: webdataset `.tar` shards, parquet files, an image folder or a Hub dataset read as a
`datasets.IterableDataset`, never loaded whole into memory nor converted to Arrow on disk first.

The stream every rank reads is a pure function of (--seed, epoch, rank, number of ranks, number of workers):
  - the shards are shuffled and the examples pass through a seeded buffer (`--shuffle_buffer_size`; datasets'
    `IterableDataset.shuffle`, re-seeded per epoch by `set_epoch`), then split across ranks
    (`datasets.distributed.split_dataset_by_node`: whole shards when their number divides by the ranks, else
    every n-th example) and across a rank's dataloader workers (by shard, as datasets does in a worker);
  - each example's random crop and flip come from its own generator (`item_generator`), keyed by its place in
    that stream.
An example whose image cannot be decoded (a corrupt tar member, a truncated file) is not trained on: its place in the
batch is marked bad (`BAD_SAMPLE`), the collate drops it and counts it, so batch k still covers the same stretch of
the stream and the resume stays exact; `--max_bad_samples` bounds the count.

So a resumed run is exact: it reads the epoch's stream again from its start and passes over, without decoding
the images, the examples the run had trained on (a count kept in the checkpoint), so it trains on the very
batches the uninterrupted run would. datasets' own `state_dict` resumes at a shard offset instead, but loses the
examples waiting in the shuffle buffer, so its batches differ; re-reading costs I/O (no image decoding) for the
part of the epoch already done.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator

import torch

from custom_pipelines.data.loading import item_generator

SHARD_RANGE_RE = re.compile(r"\{(\d+)\.\.(\d+)\}")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "image")  # webdataset member suffixes of an image
LABEL_KEYS = ("cls", "label")  # webdataset / parquet names of a class id
CAPTION_KEY = "caption"  # a stream's caption column, as a script names it (image + caption data)
BAD_SAMPLE = "bad_sample"  # the key of an item whose image could not be decoded (the reason is its value)


# the training scripts whose data can stream (the others say so and stop)
STREAMING_SCRIPTS = (
    "train_ddpm.py", "train_cfg.py", "train_gan.py", "train_ldm.py", "train_vae.py", "train_srgan.py",
    "train_cyclegan.py",
)  # fmt: skip


def is_stream(dataset) -> bool:
    """A `datasets.IterableDataset` (what `load_stream` gives and a script may have prepared further)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def expand_shards(pattern: str) -> list[str]:
    """`dir/train-{00000..00099}.tar` (webdataset's brace range, zero padding kept) or a glob → the files, sorted;
    a ValueError naming `--train_shards` when none exists."""
    match = SHARD_RANGE_RE.search(pattern)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") else 0
        candidates = [
            pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :]
            for i in range(int(first), int(last) + 1)
        ]
        files = [f for f in candidates if os.path.isfile(f)]
        missing = len(candidates) - len(files)
        if files and missing:
            raise ValueError(f"--train_shards {pattern!r}: {missing} of {len(candidates)} shards do not exist")
    else:
        files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise ValueError(
            f"--train_shards {pattern!r} matches no file (a brace range such as dir/train-{{0..9}}.tar or a glob)"
        )
    return files


def _builder_for(files: list[str]) -> str:
    kinds = {os.path.splitext(f)[1].lower() for f in files}
    if kinds == {".tar"}:
        return "webdataset"
    if kinds == {".parquet"}:
        return "parquet"
    raise ValueError(
        f"--train_shards must be .tar (webdataset) or .parquet files, all of one kind, got {sorted(kinds)}"
    )


def load_stream(args):
    """The training data as a `datasets.IterableDataset` with the image in `--image_column` (and the class id in
    `--label_column` when the data has one)."""
    import datasets

    if getattr(args, "train_shards", None):
        files = expand_shards(args.train_shards)
        stream = datasets.load_dataset(_builder_for(files), data_files={"train": files}, split="train", streaming=True)
    elif args.train_data_dir is not None:
        stream = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, split="train", streaming=True)
    elif os.path.isdir(args.dataset_name):
        files = sorted(
            f
            for ext in ("tar", "parquet")
            for f in glob.glob(os.path.join(args.dataset_name, "**", f"*.{ext}"), recursive=True)
        )
        if files:
            stream = datasets.load_dataset(
                _builder_for(files), data_files={"train": files}, split="train", streaming=True
            )
        else:
            stream = datasets.load_dataset("imagefolder", data_dir=args.dataset_name, split="train", streaming=True)
    else:
        try:
            stream = datasets.load_dataset(
                args.dataset_name, args.dataset_config_name, split="train", streaming=True, cache_dir=args.cache_dir
            )
        except Exception as err:  # the hub/offline errors vary by version; the user needs the options
            raise ValueError(
                f"--dataset_name {args.dataset_name!r} with --streaming is not a local folder of .tar/.parquet files "
                f"or images, nor a streamable Hub dataset ({type(err).__name__}: {err})"
            ) from err
    return _standard_columns(stream, args.image_column, args.label_column)


def _standard_columns(stream, image_column: str, label_column: str):
    """webdataset names columns by file suffix (`png`, `cls`): rename the one image and the class id to the
    configured columns."""
    import datasets

    features = stream.features or {}
    for name, feature in features.items():  # undecoded before any rename: a rename decodes, and a bad image raises
        if isinstance(feature, datasets.Image) and feature.decode:
            stream = stream.cast_column(name, datasets.Image(decode=False))
    if image_column not in features:
        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        images = images or [name for name in features if name in IMAGE_EXTENSIONS]
        if len(images) != 1:
            raise ValueError(
                f"--image_column {image_column!r} is not a column of the stream {sorted(features)}, and it has "
                f"{len(images)} image columns to take instead"
            )
        stream = stream.rename_column(images[0], image_column)
    if label_column not in features:
        labels = [name for name in LABEL_KEYS if name in features]
        if labels:
            stream = stream.rename_column(labels[0], label_column)
    return stream.cast_column(image_column, datasets.Image(decode=False))  # decoded only when trained on


def _undecodable() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # PIL: UnidentifiedImageError and "image file is truncated" are OSErrors; a broken PNG chunk a SyntaxError
    return (OSError, SyntaxError, Image.DecompressionBombError)


UNDECODABLE = _undecodable()


def collate_stream(collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """`collate` over the decodable items of a streamed batch, with `bad_samples`: the reasons of the others."""

    def collate_good(items: list[dict]) -> dict:
        good = [item for item in items if BAD_SAMPLE not in item]
        batch = collate(good) if good else {}
        batch["bad_samples"] = [item[BAD_SAMPLE] for item in items if BAD_SAMPLE in item]
        return batch

    return collate_good


def decode_image(value):
    """An undecoded image cell (`{"bytes", "path"}`) → PIL image."""
    import datasets

    return datasets.Image().decode_example(value)


class StreamingExamples(torch.utils.data.IterableDataset):
    """One rank's share of a stream, turned into training items by `to_item(example, generator)`.

    Args:
        stream: a `datasets.IterableDataset` (from `load_stream`).
        to_item: `fn(raw example, torch.Generator) -> dict of tensors`; all its randomness from the generator.
        seed, shuffle_buffer_size: the shard and buffer shuffle (`buffer_size` 0 or 1 keeps the stream's order).
        rank, world_size: this process's share (`split_dataset_by_node`).
        batch_size, num_workers: as the DataLoader's, to find each worker's share of the batches to skip.
    """

    def __init__(
        self,
        stream,
        to_item: Callable[[dict, torch.Generator], dict],
        *,
        seed: int,
        shuffle_buffer_size: int,
        rank: int,
        world_size: int,
        batch_size: int,
        num_workers: int,
    ):
        super().__init__()
        self.stream, self.to_item = stream, to_item
        self.seed, self.shuffle_buffer_size = seed, shuffle_buffer_size
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (a resume then calls `resume_after`)."""
        self.epoch, self.skip_batches = int(epoch), 0

    def resume_after(self, batches: int) -> int:
        """The next pass over the current epoch starts after this rank's first `batches` batches (a resume).

        A DataLoader takes batch k from worker k mod W and always starts at worker 0, so the workers skip only up to
        the last multiple of W; the caller drops the returned number of batches (< W) from the loader's start."""
        workers = max(1, self.num_workers)
        self.skip_batches = int(batches) // workers * workers
        return int(batches) - self.skip_batches

    def _rank_stream(self):
        return self._share(self.stream, self.seed)

    def _share(self, stream, seed: int):
        """This rank's share of `stream` in the current epoch, shuffled by `seed` (a worker then reads its shards)."""
        from datasets.distributed import split_dataset_by_node

        if self.shuffle_buffer_size > 1:
            stream = stream.shuffle(seed=seed, buffer_size=self.shuffle_buffer_size)
        stream.set_epoch(self.epoch)
        return split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # a DataLoader takes batch k from worker k mod W: this worker made these of the batches to skip
        skip = self.batch_size * len(range(worker, self.skip_batches, workers))
        for position, example in enumerate(self._rank_stream()):  # datasets gives each worker its own shards
            if position < skip:
                continue
            # a key unique to (epoch, rank, worker, position) for a given number of ranks and workers
            index = (position * self.world_size + self.rank) * workers + worker
            try:
                yield self.to_item(example, item_generator(self.seed, self.epoch, index, 2**40))
            except UNDECODABLE as err:  # the stream goes on; the trainer counts it against --max_bad_samples
                where = f"epoch {self.epoch}, rank {self.rank}, example {position} of worker {worker}"
                yield {BAD_SAMPLE: f"{where}: {type(err).__name__}: {err}"}


class ZippedStreams(StreamingExamples):
    """Two streams read side by side (CycleGAN's two domains): the k-th example of an epoch is `{"a": A's k-th, "b":
    B's k-th}` of this rank's (and worker's) share of each, B shuffled with its own seed; the epoch ends with the
    shorter share. Everything else (resume by skipping, per-item generators, bad samples) is `StreamingExamples`'."""

    def __init__(self, stream_a, stream_b, to_item, **kwargs):
        super().__init__(stream_a, to_item, **kwargs)
        self.stream_b = stream_b

    def _rank_stream(self):
        pairs = zip(self._share(self.stream, self.seed), self._share(self.stream_b, self.seed + 1))
        return ({"a": a, "b": b} for a, b in pairs)


def domain_streams(args) -> tuple:
    """CycleGAN's two domains as streams: `--train_shards` + `--train_shards_b`, `--dataset_name` +
    `--dataset_name_b`, a `--train_data_dir` with `trainA/` and `trainB/`, or one stream split by `--domain_column`
    (`--domain_a` / `--domain_b`: values, or a `ClassLabel`'s names)."""
    import argparse

    import datasets

    if args.domain_column is not None:
        stream = load_stream(args)
        feature = (stream.features or {}).get(args.domain_column)
        if feature is None:
            raise ValueError(f"--domain_column={args.domain_column!r} is not a column of the stream")

        def value(given):  # the flag's text as the column holds it: a class id or name, an int, a string
            if isinstance(feature, datasets.ClassLabel):
                return int(given) if str(given).isdigit() else feature.str2int(str(given))
            return int(given) if "int" in str(getattr(feature, "dtype", "")) else given

        column, a, b = args.domain_column, value(args.domain_a), value(args.domain_b)
        return stream.filter(lambda e: e[column] == a), stream.filter(lambda e: e[column] == b)
    if args.train_data_dir is not None:
        parts = [os.path.join(args.train_data_dir, name) for name in ("trainA", "trainB")]
        missing = [p for p in parts if not os.path.isdir(p)]
        if missing:
            raise ValueError(
                f"--train_data_dir {args.train_data_dir!r} must hold trainA/ and trainB/: {missing} missing"
            )
        sources = [{"train_data_dir": p, "dataset_name": None, "train_shards": None} for p in parts]
    else:
        b = {"train_shards": args.train_shards_b, "dataset_name": args.dataset_name_b, "train_data_dir": None}
        if b["train_shards"] is None and b["dataset_name"] is None:
            raise ValueError(
                "a streamed CycleGAN needs domain B: --train_shards_b (with --train_shards), --dataset_name_b (with "
                "--dataset_name), or --domain_column with --domain_a and --domain_b"
            )
        sources = [{}, b]
    return tuple(load_stream(argparse.Namespace(**{**vars(args), **source})) for source in sources)


def streaming_image_items(args, stream, transform, *, rank: int, world_size: int, num_workers: int):
    """The core's image items (`pixel_values` in [-1, 1], `labels` when the stream has them, `captions` when it has a
    `caption` column) from a stream."""
    image_column, label_column = args.image_column, args.label_column
    has_labels = label_column in (stream.features or {})
    has_captions = CAPTION_KEY in (stream.features or {})

    num_classes = getattr(args, "num_classes", None)

    def to_item(example: dict, generator: torch.Generator) -> dict:
        item = {"pixel_values": transform(decode_image(example[image_column]), generator)}
        if has_captions:
            item["captions"] = example[CAPTION_KEY]
        if has_labels:
            item["labels"] = int(example[label_column])
            if num_classes is not None and not 0 <= item["labels"] < num_classes:
                label = item["labels"]
                raise ValueError(f"a streamed label is {label}, outside --num_classes {num_classes} (0 … K-1)")
        return item

    return StreamingExamples(
        stream,
        to_item,
        seed=args.seed,
        shuffle_buffer_size=args.shuffle_buffer_size,
        rank=rank,
        world_size=world_size,
        batch_size=args.train_batch_size,
        num_workers=num_workers,
    )
