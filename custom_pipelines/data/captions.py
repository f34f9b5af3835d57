"""Captions for text-conditional training: a dataset's own `text` / `caption` column, or sentences made from its
class labels for the built-in sets ("a handwritten digit seven").

An imagefolder with a `metadata.jsonl` (`{"file_name": "0001.png", "text": "a red square"}` per line), as in
diffusers' text_to_image example, loads with its `text` column; `datasets.load_dataset` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

CAPTION_COLUMNS = ("text", "caption", "txt")  # looked for in this order when none is named (txt: webdataset)
# How a class of a built-in set is said in words: a template over the ClassLabel name, or one caption per name.
LABEL_TEMPLATES: dict[str, str | dict[str, str]] = {
    "digits": "a handwritten digit {name}",
    "faces": {"face": "a photo of a face", "other": "a photo of something that is not a face"},
}
GENERIC_TEMPLATE = "an image of {name}"  # any other dataset with a ClassLabel column


def label_caption(name: str, dataset_name: str | None = None) -> str:
    """The caption of one class: `label_caption("seven", "digits")` → "a handwritten digit seven"."""
    template = LABEL_TEMPLATES.get(dataset_name or "", GENERIC_TEMPLATE)
    if isinstance(template, dict):
        return template.get(name, GENERIC_TEMPLATE.format(name=name))
    return template.format(name=name)


def label_captions(names: Sequence[str], dataset_name: str | None = None) -> list[str]:
    """One caption per class id, in id order."""
    return [label_caption(name, dataset_name) for name in names]


def find_caption_column(column_names: Sequence[str], caption_column: str | None = None) -> str | None:
    """The caption column: the named one (ValueError if absent), else the first of `text` / `caption`, else None."""
    if caption_column is not None:
        if caption_column not in column_names:
            raise ValueError(f"caption_column={caption_column!r} is not a column of the dataset {list(column_names)}")
        return caption_column
    return next((name for name in CAPTION_COLUMNS if name in column_names), None)


def dataset_captions(
    dataset, caption_column: str | None = None, label_column: str = "label", dataset_name: str | None = None
) -> list[str]:
    """One caption per row: the caption column's strings, or captions made from a `ClassLabel` label column.

    Raises a ValueError naming the options when the dataset has neither (plain integer labels have no names to
    say: give the dataset a `text` column, e.g. with an imagefolder's metadata.jsonl).
    """
    import datasets

    column = find_caption_column(dataset.column_names, caption_column)
    if column is not None:
        captions = dataset[column]
        bad = next((c for c in captions if not isinstance(c, str)), None)
        if bad is not None or any(c is None for c in captions):
            raise ValueError(f"caption column {column!r} must hold strings, got {bad!r}")
        return list(captions)
    feature = dataset.features.get(label_column) if label_column in dataset.column_names else None
    if isinstance(feature, datasets.ClassLabel):
        names = label_captions(feature.names, dataset_name)
        return [names[i] for i in dataset[label_column]]
    raise ValueError(
        f"the dataset has no caption column ({' / '.join(CAPTION_COLUMNS)}; columns: {dataset.column_names}) and no "
        f"ClassLabel column {label_column!r} to make captions from: add a `text` column (an imagefolder's "
        "metadata.jsonl) or pass --caption_column"
    )


def caption_vocabulary(captions: Sequence[str], empty: str = "") -> tuple[list[str], list[int]]:
    """The distinct captions (the empty caption, the unconditional branch, first) and each row's index into them,
    so a frozen text encoder encodes every distinct caption once."""
    unique = [empty] + sorted(set(captions) - {empty})
    index = {caption: i for i, caption in enumerate(unique)}
    return unique, [index[c] for c in captions]
