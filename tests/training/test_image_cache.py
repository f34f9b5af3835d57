"""The trainer's image batches are the same tensors whether a small dataset is transformed once and held in memory
(`TransformedImages`) or transformed at every read, with and without random flips; the cache is used only where it
pays (center crop, more than one pass, small)."""

import argparse

import pytest
import torch

from custom_pipelines.data import ImageTransform, load_image_dataset
from custom_pipelines.training import add_common_args
from custom_pipelines.training import data as training_data
from custom_pipelines.training.data import TransformedImages, make_image_dataloader


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", resolution=12).select(range(40))


def parse(*extra):
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return parser.parse_args(["--output_dir", "unused", "--train_batch_size", "8", "--seed", "3", *extra])


def batches(args, dataset, epochs=2):
    loader = make_image_dataloader(args, dataset, resolution=12, channels=1)
    out = []
    for _ in range(epochs):
        out += [(b["pixel_values"], b["labels"]) for b in loader]
    return loader, out


@pytest.mark.parametrize("flip", [[], ["--random_flip"]])
def test_cached_batches_equal_the_on_the_fly_ones(digits, flip, monkeypatch):
    cached_loader, cached = batches(parse("--max_train_steps", "20", *flip), digits)
    assert isinstance(cached_loader.dataset, TransformedImages)
    monkeypatch.setattr(training_data, "_worth_caching", lambda *a: False)
    lazy_loader, lazy = batches(parse("--max_train_steps", "20", *flip), digits)
    assert not isinstance(lazy_loader.dataset, TransformedImages)
    assert len(cached) == len(lazy) == 10
    for (pixels_c, labels_c), (pixels_l, labels_l) in zip(cached, lazy):
        assert pixels_c.shape == (8, 1, 12, 12) and pixels_c.dtype == torch.float32
        assert torch.equal(pixels_c, pixels_l) and torch.equal(labels_c, labels_l)
    if flip:  # the flips really happen: some image appears mirrored relative to its unflipped transform
        plain = TransformedImages(digits, ImageTransform(12, 1), "image", None).pixel_values
        seen = torch.cat([p for p, _ in cached])
        mirrored = [s for s in seen if not any(torch.equal(s, q) for q in plain)]
        assert mirrored and all(any(torch.equal(s.flip(-1), q) for q in plain) for s in mirrored)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--max_train_steps", "20"], True),  # 160 reads of 40 images
        (["--max_train_steps", "4"], False),  # 32 reads: one pass is cheaper on the fly
        (["--max_train_steps", "20", "--no-center_crop"], False),  # a random crop differs at every read
        (["--num_epochs", "2"], True),
        (["--num_epochs", "1"], False),
    ],
)
def test_cache_only_where_it_pays(digits, extra, expected):
    assert training_data._worth_caching(parse(*extra), digits, 12, 1) is expected


def test_cache_has_a_size_limit(digits, monkeypatch):
    monkeypatch.setattr(training_data, "IMAGE_CACHE_BYTES", 40 * 12 * 12 * 4 - 1)
    assert not training_data._worth_caching(parse("--max_train_steps", "20"), digits, 12, 1)
