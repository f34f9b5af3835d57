from .builtin import BUILTIN_DATASETS, DIGIT_NAMES, digits_dataset, faces_dataset, photos_dataset
from .loading import ImageTransform, filter_classes, load_image_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "DIGIT_NAMES",
    "ImageTransform",
    "digits_dataset",
    "faces_dataset",
    "filter_classes",
    "load_image_dataset",
    "photos_dataset",
]
