"""Sample-quality evaluation: metrics (FID, KID, precision/recall, IS), feature extractors and the CLI."""

from custom_pipelines.evaluation.digits_classifier import (
    DigitsClassifier,
    DigitsFeatureExtractor,
    load_digits_classifier,
    train_digits_classifier,
)
from custom_pipelines.evaluation.evaluator import build_feature_extractor, evaluate_pipeline, sample_images
from custom_pipelines.evaluation.features import FeatureExtractor, load_digits_images, reference_features
from custom_pipelines.evaluation.inception import InceptionFeatureExtractor, InceptionV3FID, load_inception_fid
from custom_pipelines.evaluation.metrics import (
    GaussianStatistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)

__all__ = [
    "DigitsClassifier",
    "DigitsFeatureExtractor",
    "FeatureExtractor",
    "GaussianStatistics",
    "InceptionFeatureExtractor",
    "InceptionV3FID",
    "build_feature_extractor",
    "evaluate_pipeline",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "load_digits_classifier",
    "load_digits_images",
    "load_inception_fid",
    "precision_recall",
    "reference_features",
    "sample_images",
    "train_digits_classifier",
]
