"""Captions for text-conditional training: a text/caption column, or sentences made from class labels."""

import datasets
import pytest

from custom_pipelines.data.captions import (
    caption_vocabulary,
    dataset_captions,
    find_caption_column,
    label_caption,
    label_captions,
)


def test_label_captions_of_the_built_in_sets():
    assert label_caption("seven", "digits") == "a handwritten digit seven"
    faces = label_captions(["other", "face"], "faces")
    assert faces == ["a photo of something that is not a face", "a photo of a face"]
    assert label_caption("cat") == "an image of cat"


def test_find_caption_column():
    assert find_caption_column(["image", "caption", "text"]) == "text"
    assert find_caption_column(["image", "caption"]) == "caption"
    assert find_caption_column(["image", "label"]) is None
    assert find_caption_column(["image", "prompt"], "prompt") == "prompt"
    with pytest.raises(ValueError, match="caption_column='prompt' is not a column"):
        find_caption_column(["image"], "prompt")


def test_dataset_captions_from_a_column_or_the_labels():
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    with_text = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]}, features=features)
    assert dataset_captions(with_text) == ["x", "y"]
    from_labels = with_text.remove_columns("text")
    assert dataset_captions(from_labels, dataset_name="digits") == ["a handwritten digit a", "a handwritten digit b"]
    plain = datasets.Dataset.from_dict({"label": [0, 1]})
    with pytest.raises(ValueError, match="no caption column"):
        dataset_captions(plain)
    bad = datasets.Dataset.from_dict({"caption": [1, 2]})
    with pytest.raises(ValueError, match="must hold strings"):
        dataset_captions(bad)


def test_caption_vocabulary_puts_the_empty_caption_first():
    unique, index = caption_vocabulary(["b", "a", "b", ""])
    assert unique == ["", "a", "b"] and index == [2, 1, 2, 0]
    assert [unique[i] for i in index] == ["b", "a", "b", ""]
