import json

import numpy as np
import pytest
import torch
from PIL import Image

from custom_pipelines.data import DIGIT_NAMES, ImageTransform, filter_classes, load_image_dataset


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", resolution=16)


def test_digits_dataset_columns_labels_and_pixels(digits):
    from sklearn.datasets import load_digits

    assert len(digits) == 1797 and digits.column_names == ["image", "label"]
    assert digits.features["label"].names == DIGIT_NAMES
    assert np.bincount(digits["label"]).tolist() == np.bincount(load_digits().target).tolist()
    first = digits[0]["image"]
    assert first.size == (16, 16) and first.mode == "L"
    # upscaling keeps the digit: the brightest 8x8 cell of the source stays bright
    assert np.asarray(first).max() >= 200


def test_native_resolution_is_exact():
    from sklearn.datasets import load_digits

    native = load_image_dataset("digits", resolution=8)
    expected = np.rint(load_digits().images[3] / 16 * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(native[3]["image"]), expected)


def test_faces_and_photos():
    faces = load_image_dataset("faces", resolution=32)
    assert len(faces) == 100 and faces[0]["image"].size == (32, 32)
    photos = load_image_dataset("photos")
    assert len(photos) == 6 and photos[0]["image"].mode == "RGB"


def test_transform_range_shape_and_seeded_flip():
    image = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8) * 12, (10, 1)))  # 20 wide, 10 high, gradient
    t = ImageTransform(8, channels=1, center_crop=True)(image)
    assert t.shape == (1, 8, 8) and -1.0 <= t.min() and t.max() <= 1.0
    assert t[0, 0, 0] < t[0, 0, -1]  # left-to-right gradient preserved without flip
    rgb = ImageTransform(8, channels=3)(image)
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[1])
    flips = [
        ImageTransform(8, 1, random_flip=True, generator=torch.Generator().manual_seed(s))(image) for s in range(8)
    ]
    flipped = [bool(f[0, 0, 0] > f[0, 0, -1]) for f in flips]
    assert any(flipped) and not all(flipped)


def test_class_filter(digits):
    kept = filter_classes(digits, "label", [3, 7])
    assert set(kept["label"]) == {3, 7} and len(kept) == 183 + 179
    with pytest.raises(ValueError, match="keeps no example"):
        filter_classes(digits.select(range(5)), "label", [9])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset_name": "no-such-dataset-xyz"}, "not a built-in dataset"),
        ({"dataset_name": "digits", "train_data_dir": "x"}, "exactly one"),
        ({}, "exactly one"),
        ({"train_data_dir": "/nonexistent/folder"}, "train_data_dir"),
    ],
)
def test_bad_dataset_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_image_dataset(**kwargs)


def test_imagefolder_and_saved_dataset(tmp_path, digits):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        digits[i]["image"].save(folder / f"{i}.png")
    ds = load_image_dataset(train_data_dir=str(folder))
    assert len(ds) == 4 and ds[0]["image"].size == (16, 16)
    digits.select(range(10)).save_to_disk(tmp_path / "saved")
    saved = load_image_dataset(str(tmp_path / "saved"))
    assert len(saved) == 10 and saved["label"] == digits["label"][:10]


@pytest.mark.parametrize("file_name", ["../secret.png", "/etc/secret.png", "sub/../../secret.png"])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_metadata_file_names_cannot_escape_the_data_dir(tmp_path, file_name, kind):
    from PIL import Image

    from custom_pipelines.data.loading import load_image_dataset

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "a.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "secret.png")
    if kind == "jsonl":
        rows = [{"file_name": "a.png", "text": "ok"}, {"file_name": file_name, "text": "stolen"}]
        (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        line = 2
    else:
        (data / "metadata.csv").write_text(f"file_name,text\na.png,ok\n{file_name},stolen\n")
        line = 3
    with pytest.raises(ValueError, match=rf"metadata\.{kind} line {line}: file_name .* points outside train_data_dir"):
        load_image_dataset(train_data_dir=str(data))
