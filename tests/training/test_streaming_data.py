"""Streaming data at the data level: shard patterns, tar shards and a parquet Hub-layout folder as
`IterableDataset`s, disjoint rank shares, and the exact resume skip (with and without dataloader workers)."""

import argparse

import pytest
import torch

from custom_pipelines.data import ImageTransform
from custom_pipelines.training import add_common_args
from custom_pipelines.training.streaming import expand_shards, load_stream, streaming_image_items
from tests.training.streaming_data import digits_rows, write_parquet_dataset, write_tar_shards


@pytest.fixture(scope="module")
def rows():
    return digits_rows(48)


@pytest.fixture(scope="module")
def shards(rows, tmp_path_factory):
    return write_tar_shards(tmp_path_factory.mktemp("shards"), rows, num_shards=4)


def parse(*extra):
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return parser.parse_args(["--output_dir", "unused", "--train_batch_size", "4", "--seed", "2", *extra])


def test_expand_shards_keeps_padding_and_names_the_flag(tmp_path, shards):
    files = expand_shards(shards)
    assert [f.rsplit("/", 1)[1] for f in files] == [f"train-0000{i}.tar" for i in range(4)]
    assert expand_shards(shards.replace("{00000..00003}", "*")) == files
    with pytest.raises(ValueError, match=r"--train_shards .* matches no file"):
        expand_shards(str(tmp_path / "none-{0..9}.tar"))
    with pytest.raises(ValueError, match=r"2 of 6 shards do not exist"):
        expand_shards(shards.replace("00003}", "00005}"))


def keys_of(items):
    return [tuple(item["pixel_values"].flatten()[:6].tolist()) + (item["labels"],) for item in items]


def items(stream, rank=0, world=1, workers=0, buffer=16, flip=True):
    args = parse("--shuffle_buffer_size", str(buffer))
    return streaming_image_items(
        args, stream, ImageTransform(8, 1, random_flip=flip), rank=rank, world_size=world, num_workers=workers
    )


@pytest.mark.parametrize("source", ["tar", "parquet"])
def test_two_ranks_read_disjoint_shares_that_cover_the_data(source, shards, rows, tmp_path):
    if source == "tar":
        args = parse("--train_shards", shards)
    else:
        args = parse("--dataset_name", write_parquet_dataset(tmp_path / "hub-layout", rows), "--streaming")
    stream = load_stream(args)
    assert {"image", "label"} <= set(stream.features)
    whole = keys_of(items(stream, buffer=0, flip=False))
    assert len(whole) == 48 and sorted(k[-1] for k in whole) == sorted(label for _, label in rows)
    rank0, rank1 = (keys_of(items(stream, rank=r, world=2, buffer=0, flip=False)) for r in (0, 1))
    assert len(rank0) == len(rank1) == 24
    assert sorted(rank0 + rank1) == sorted(whole)  # disjoint, and together all of it
    shuffled = keys_of(items(stream, buffer=16, flip=False))
    assert sorted(shuffled) != shuffled and shuffled != whole  # the buffer shuffles (flips differ too)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_skips_exactly_the_batches_already_trained(shards, workers):
    stream = load_stream(parse("--train_shards", shards))

    def batches(dataset):
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=list)
        return [keys_of(batch) for batch in loader]

    dataset = items(stream, workers=workers)
    dataset.set_epoch(1)
    straight = batches(dataset)
    assert len(straight) == 12
    dataset = items(stream, workers=workers)
    dataset.set_epoch(1)
    drop = dataset.resume_after(5)  # killed after 5 batches of epoch 1
    assert drop == (1 if workers == 2 else 0)  # with 2 workers: skip 4 in the workers, drop 1 from the loader
    assert batches(dataset)[drop:] == straight[5:]
    dataset.set_epoch(1)
    assert batches(dataset) == straight  # set_epoch starts the epoch at its beginning again
    dataset.set_epoch(2)
    assert batches(dataset) != straight  # a new epoch: a new shuffle and new flips
