"""Two-domain data for CycleGAN: the offline stand-in pairs, folders, a domain column, two datasets, and batches."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from custom_pipelines.data.unpaired import (
    UnpairedDataset,
    digits_thick_domains,
    load_unpaired_domains,
    photos_posterized_domains,
    thicken_strokes,
    unpaired_training_data,
)


@pytest.fixture(scope="module")
def digits():
    return digits_thick_domains(16)


def ink(dataset) -> float:
    return float(np.mean([np.asarray(row["image"], dtype=np.float64).mean() for row in dataset]))


def test_thicken_strokes_grows_a_pixel_into_a_square():
    image = np.zeros((7, 7), dtype=np.uint8)
    image[3, 3] = 200
    out = np.asarray(thicken_strokes(Image.fromarray(image)))
    assert (out[2:5, 2:5] == 200).all() and out.sum() == 9 * 200


def test_digits_domains_are_disjoint_halves_with_a_held_out_split(digits):
    sizes = [len(d) for d in (digits.train_a, digits.train_b, digits.test_a, digits.test_b)]
    assert sizes == [808, 809, 90, 90] and sum(sizes) == 1797
    assert (digits.name_a, digits.name_b) == ("thin", "thick")
    assert digits.train_a[0]["image"].size == (16, 16) and digits.train_b[0]["image"].mode == "L"
    assert ink(digits.train_b) > 1.4 * ink(digits.train_a)  # the strokes of B are thicker
    # unpaired: no B image is the thickened version of an A image
    a_thick = {np.asarray(thicken_strokes(row["image"])).tobytes() for row in digits.train_a}
    assert not a_thick & {np.asarray(row["image"]).tobytes() for row in digits.train_b}
    again = digits_thick_domains(16)
    assert np.array_equal(np.asarray(again.test_a[5]["image"]), np.asarray(digits.test_a[5]["image"]))


def test_photos_posterized_domains():
    photos = photos_posterized_domains(16, holdout_fraction=0.25)
    assert [len(d) for d in (photos.train_a, photos.test_a)] == [192, 64]
    b = np.stack([np.asarray(row["image"]) for row in photos.train_b])
    assert b.shape[1:] == (16, 16, 3) and len(np.unique(b)) <= 4  # 2 bits per channel
    assert len(np.unique(np.stack([np.asarray(row["image"]) for row in photos.train_a]))) > 64


def test_batches_pair_every_a_with_a_random_b_drawn_per_epoch_and_item(digits):
    train, test_a, test_b = unpaired_training_data(digits, 8, 1)
    assert isinstance(train, UnpairedDataset) and len(train) == 808 and len(test_a) == 90
    batch = train.collate([train[i] for i in range(4)])
    assert batch["pixel_values_a"].shape == batch["pixel_values_b"].shape == (4, 1, 8, 8)
    assert -1 <= batch["pixel_values_b"].min() and batch["pixel_values_b"].max() <= 1
    torch.manual_seed(123)  # the global RNG plays no part: a prefetched batch or a resume draws the same pairs
    again = train.collate([train[i] for i in range(4)])
    assert torch.equal(again["pixel_values_b"], batch["pixel_values_b"])
    assert torch.equal(again["pixel_values_a"], torch.stack([test for test in batch["pixel_values_a"]]))
    train.set_epoch(1)  # another epoch, other pairs
    assert not torch.equal(train.collate([train[i] for i in range(4)])["pixel_values_b"], batch["pixel_values_b"])
    other_seed = unpaired_training_data(digits, 8, 1, seed=1)[0]
    assert not torch.equal(
        other_seed.collate([other_seed[i] for i in range(4)])["pixel_values_b"], batch["pixel_values_b"]
    )
    assert test_a.first(3).shape == (3, 1, 8, 8) and test_b.first(500).shape == (90, 1, 8, 8)


def write_images(folder, n, value):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((6, 6, 3), value + i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_a_junyanz_folder_with_and_without_test_folders(tmp_path):
    write_images(tmp_path / "trainA", 10, 0)
    write_images(tmp_path / "trainB", 20, 100)
    domains = load_unpaired_domains(train_data_dir=str(tmp_path), holdout_fraction=0.2)
    assert [len(d) for d in (domains.train_a, domains.test_a, domains.train_b, domains.test_b)] == [8, 2, 16, 4]
    write_images(tmp_path / "testA", 3, 50)
    write_images(tmp_path / "testB", 5, 150)
    domains = load_unpaired_domains(train_data_dir=str(tmp_path))
    assert [len(d) for d in (domains.train_a, domains.test_a, domains.train_b, domains.test_b)] == [10, 3, 20, 5]
    assert np.asarray(domains.test_b[0]["image"]).min() >= 150


def test_one_dataset_with_a_domain_column_and_two_datasets(tmp_path):
    images = [Image.fromarray(np.full((4, 4), 10 * i, dtype=np.uint8)) for i in range(20)]
    features = datasets.Features({"image": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "dog"])})
    data = datasets.Dataset.from_dict({"image": images, "kind": [i % 2 for i in range(20)]}, features=features)
    data.save_to_disk(tmp_path / "both")
    domains = load_unpaired_domains(str(tmp_path / "both"), domain_column="kind", domain_a="cat", domain_b=1)
    assert len(domains.train_a) + len(domains.test_a) == 10 and len(domains.test_b) == 1
    cats = [int(np.asarray(row["image"])[0, 0]) for row in domains.train_a]
    assert all(v % 20 == 0 for v in cats)  # even indices: the cats
    data.select(range(10)).save_to_disk(tmp_path / "a")
    data.select(range(10, 20)).save_to_disk(tmp_path / "b")
    two = load_unpaired_domains(str(tmp_path / "a"), dataset_name_b=str(tmp_path / "b"))
    assert len(two.train_a) + len(two.test_a) == 10 and two.train_b.column_names == ["image"]
    with pytest.raises(ValueError, match="domain_a='bird' matches no row"):
        load_unpaired_domains(str(tmp_path / "both"), domain_column="kind", domain_a="bird", domain_b="dog")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give exactly one of dataset_name and train_data_dir"),
        ({"dataset_name": "digits"}, "is not a built-in pair"),
        ({"dataset_name": "digits-thick", "holdout_fraction": 1.0}, "holdout_fraction must be in"),
    ],
)
def test_bad_sources_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_unpaired_domains(**kwargs)


def test_a_folder_without_train_b_raises(tmp_path):
    write_images(tmp_path / "trainA", 2, 0)
    with pytest.raises(ValueError, match="must hold the folders trainA/ and trainB/"):
        load_unpaired_domains(train_data_dir=str(tmp_path))
