"""Sample-quality evaluation: metrics (FID, KID, precision/recall, IS), feature extractors and the CLI.

Names are imported on first use (`custom_pipelines.lazy`), so the CLI parses its flags before torch is loaded.
"""

from custom_pipelines.lazy import lazy_exports

_PUBLIC = {
    "DigitsClassifier": ".digits_classifier",
    "DigitsFeatureExtractor": ".digits_classifier",
    "load_digits_classifier": ".digits_classifier",
    "train_digits_classifier": ".digits_classifier",
    "build_feature_extractor": ".evaluator",
    "evaluate_pipeline": ".evaluator",
    "sample_images": ".evaluator",
    "FeatureExtractor": ".features",
    "load_digits_images": ".features",
    "reference_features": ".features",
    "InceptionFeatureExtractor": ".inception",
    "InceptionV3FID": ".inception",
    "load_inception_fid": ".inception",
    "GaussianStatistics": ".metrics",
    "frechet_distance": ".metrics",
    "inception_score": ".metrics",
    "kernel_inception_distance": ".metrics",
    "precision_recall": ".metrics",
}
__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
