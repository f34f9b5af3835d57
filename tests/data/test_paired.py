"""LR/HR pairs from the bundled photos: shapes, the bicubic degradation, determinism, the held-out split, scoring."""

import numpy as np
import pytest
import torch
from PIL import Image

from custom_pipelines.data.paired import (
    HELD_OUT_PHOTOS,
    TRAIN_PHOTOS,
    PairedPatchDataset,
    bicubic_downscale,
    bundled_photo,
    collate_pairs,
    comparison_strips,
    held_out_pairs,
    modcrop,
    score_held_out,
    to_tensor,
    training_images,
)


@pytest.fixture(scope="module")
def photos():
    return training_images("photos")


def test_training_photos_exclude_the_held_out_ones(photos):
    assert set(TRAIN_PHOTOS).isdisjoint(HELD_OUT_PHOTOS) and len(photos) == len(TRAIN_PHOTOS) == 5
    held_out = [np.asarray(bundled_photo(name)) for name in HELD_OUT_PHOTOS]
    for photo in photos:
        assert photo.mode == "RGB" and min(photo.size) >= 300
        assert not any(np.asarray(photo).shape == h.shape and np.array_equal(np.asarray(photo), h) for h in held_out)


def test_pairs_shapes_ranges_and_degradation(photos):
    dataset = PairedPatchDataset(photos, hr_size=32, scale=4, num_patches=10, seed=0, augment=False)
    item = dataset[3]
    assert item["hr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8)
    assert item["hr"].min() >= -1 and item["hr"].max() <= 1
    # the LR input is exactly PIL's bicubic downscaling of the HR crop
    hr = Image.fromarray(((item["hr"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
    torch.testing.assert_close(to_tensor(bicubic_downscale(hr, 4)) * 2 - 1, item["lr"], rtol=0, atol=1e-6)
    batch = collate_pairs([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["lr_pixel_values"].shape == (4, 3, 8, 8)


def test_crops_are_fixed_by_seed_and_index(photos):
    a = PairedPatchDataset(photos, 24, 2, num_patches=8, seed=1)
    b = PairedPatchDataset(photos, 24, 2, num_patches=8, seed=1)
    c = PairedPatchDataset(photos, 24, 2, num_patches=8, seed=2)
    assert all(torch.equal(a[i]["hr"], b[i]["hr"]) for i in range(8))
    assert not all(torch.equal(a[i]["hr"], c[i]["hr"]) for i in range(8))
    assert len({a[i]["hr"].sum().item() for i in range(8)}) == 8  # distinct crops
    with pytest.raises(IndexError):
        a[8]


def test_small_images_are_enlarged_and_grayscale_works():
    tiny = [Image.new("RGB", (10, 7), (200, 10, 10))]
    item = PairedPatchDataset(tiny, hr_size=16, scale=2, num_patches=1, channels=1)[0]
    assert item["hr"].shape == (1, 16, 16) and item["lr"].shape == (1, 8, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hr_size": 30, "scale": 4}, "hr_size must be a positive multiple of scale=4"),
        ({"num_patches": 0}, "num_patches must be >= 1"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"images": []}, "at least one image"),
    ],
)
def test_bad_dataset_arguments_raise(photos, kwargs, message):
    call = {"images": photos, "hr_size": 32, "scale": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        PairedPatchDataset(**call)


def test_user_folder(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((40, 50, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    images = training_images(None, str(tmp_path))
    assert len(images) == 2 and images[1].size == (50, 40)
    assert PairedPatchDataset(images, 16, 4, num_patches=3)[2]["lr"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match="image_column='picture'"):
        training_images(None, str(tmp_path), image_column="picture")


def test_held_out_pairs_align_and_bicubic_scores_match_a_direct_computation():
    pairs = held_out_pairs(4)
    assert [name for name, _, _ in pairs] == list(HELD_OUT_PHOTOS)
    for name, lr, hr in pairs:
        assert hr.width == 4 * lr.width and hr.height == 4 * lr.height
        assert hr.size == modcrop(bundled_photo(name), 4).size
    # an "upscaler" that returns the HR photo scores inf / 1; bicubic is a finite, realistic baseline
    exact = {name: to_tensor(hr)[None] for name, _, hr in pairs}
    lookup = {lr.size: exact[name] for name, lr, _ in pairs}
    result = score_held_out(lambda lr: lookup[lr.size], 4)
    assert result["model"]["psnr_y"] == float("inf") and result["model"]["ssim_y"] == pytest.approx(1.0)
    assert 20 < result["bicubic"]["psnr_y"] < 40 and 0.5 < result["bicubic"]["ssim_y"] < 1
    assert result["bicubic"]["sharpness"] < result["model"]["sharpness"]  # bicubic blurs
    strips = comparison_strips(result["outputs"], num_strips=3, crop_size=40)
    assert strips.shape == (3, 3, 40, 3 * 40 + 2 * 2) and strips.min() >= 0 and strips.max() <= 1
