"""Sample a pipeline with seeded generators and score the samples against real reference images.

`evaluate_pipeline` is the Python entry point (training scripts call it with a few hundred samples);
`python -m custom_pipelines.evaluate` wraps it for the command line.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from diffusers import DiffusionPipeline

from custom_pipelines.evaluation.digits_classifier import DigitsFeatureExtractor, load_digits_classifier
from custom_pipelines.evaluation.features import FeatureExtractor, reference_features
from custom_pipelines.evaluation.inception import InceptionFeatureExtractor, load_inception_fid
from custom_pipelines.evaluation.metrics import (
    GaussianStatistics,
    fid_from_statistics,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from custom_pipelines.pipelines.utils import check_positive_int, sample_images

logger = logging.getLogger(__name__)

# (pipe, num_samples, batch_size, seed) → batches of (images [B, C, H, W] in [0, 1], class labels [B] or None)
Sampler = Callable[[DiffusionPipeline, int, int, int], Iterable[tuple[torch.Tensor, torch.Tensor | None]]]


def build_feature_extractor(
    name: Literal["digits", "inception"],
    resolution: int = 16,
    inception_weights: str | os.PathLike | None = None,
    inception_filename: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """The `"digits"` classifier (at `resolution`, trained and cached on first use) or the FID `"inception"`."""
    if name == "digits":
        return DigitsFeatureExtractor(load_digits_classifier(resolution, cache_dir=cache_dir, device=device))
    elif name == "inception":
        if inception_weights is None:
            raise ValueError(
                "feature extractor 'inception' needs inception_weights (a local .safetensors file, a folder or a "
                "Hub repo id); weights are never downloaded implicitly, see docs/evaluation.md"
            )
        model = load_inception_fid(inception_weights, filename=inception_filename)
        return InceptionFeatureExtractor(model.to(device))
    else:
        raise ValueError(f"feature extractor must be 'digits' or 'inception', got {name!r}")


def compute_metrics(
    real_features: torch.Tensor,
    fake_stats: GaussianStatistics,
    fake_features: torch.Tensor,
    fake_logits: torch.Tensor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    is_splits: int = 10,
    fid_method: Literal["sqrtm", "eigh"] = "sqrtm",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """FID, KID, precision/recall (and IS when logits are given) of generated vs real features.

    KID and precision/recall run on `device` (their pairwise products dominate the cost at 50k samples).
    """
    kid_mean, kid_std = kernel_inception_distance(
        real_features, fake_features, kid_subsets, kid_subset_size, torch.Generator().manual_seed(seed), device
    )
    precision, recall = precision_recall(real_features, fake_features, k=pr_k, device=device)
    fid = fid_from_statistics(GaussianStatistics.from_features(real_features), fake_stats, method=fid_method)
    metrics = {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}
    if fake_logits is not None:
        is_mean, is_std = inception_score(fake_logits.softmax(dim=-1), min(is_splits, fake_logits.shape[0]))
        metrics.update(inception_score_mean=is_mean, inception_score_std=is_std)
    return metrics


def evaluate_pipeline(
    pipe: DiffusionPipeline,
    num_samples: int,
    reference: str | os.PathLike | torch.Tensor = "digits",
    extractor: FeatureExtractor | Literal["digits"] = "digits",
    *,
    batch_size: int = 64,
    seed: int = 0,
    class_labels: Sequence[int] | None = None,
    class_labels_kwarg: str = "class_labels",
    reference_num_samples: int | None = None,
    reference_split: str = "all",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    is_splits: int = 10,
    fid_method: Literal["sqrtm", "eigh"] = "sqrtm",
    digits_cache_dir: str | os.PathLike | None = None,
    sampler: Sampler | None = None,
    **pipeline_kwargs,
) -> dict:
    """Sample `num_samples` images from `pipe` and score them against real images.

    Args:
        pipe (`DiffusionPipeline`): any pipeline whose `__call__` takes `generator` and `output_type="pt"`.
        num_samples (`int`): generated images (50k for paper numbers; a few hundred for training curves).
        reference (`str` or `torch.Tensor`, defaults to `"digits"`): `"digits"`, a folder of images, or real
            features `[N, D]` already computed with `reference_features` (reuse them across calls).
        extractor (`FeatureExtractor` or `"digits"`, defaults to `"digits"`): `"digits"` loads the digits
            classifier at the generated images' resolution.
        batch_size (`int`, defaults to 64), seed (`int`, defaults to 0): sampling batch size and master seed.
        class_labels (`Sequence[int]`, *optional*): labels for class-conditional pipelines, cycled to
            `num_samples`; with the digits extractor, `class_accuracy` is reported.
        reference_num_samples (`int`, *optional*), reference_split (`str`, defaults to `"all"`): which real images.
        kid_subsets, kid_subset_size, pr_k, is_splits, fid_method: metric options (see `metrics`).
        digits_cache_dir (`str`, *optional*): cache folder of the digits classifier when `extractor="digits"`.
        sampler (`Callable`, *optional*): `sampler(pipe, num_samples, batch_size, seed)` yielding `(images, labels)`
            batches as `sample_images` does (the default), for inputs it cannot give: prompts, input images (the
            command line's `custom_pipelines.call_inputs.sample_batches`). Then `class_labels` and `pipeline_kwargs`
            belong to the sampler and are refused here.
        pipeline_kwargs: passed to every pipeline call (e.g. `num_inference_steps=50`, `guidance_scale=3.0`).

    Returns:
        A dict with `fid`, `kid_mean`, `kid_std`, `precision`, `recall`, `inception_score_mean`/`_std` (when the
        extractor has logits), `class_accuracy` (with `class_labels` and a classifier), and the run's settings.
    """
    # the metric options are checked before sampling, which is the slow part
    counts = {"num_samples": num_samples, "batch_size": batch_size, "kid_subsets": kid_subsets, "pr_k": pr_k}
    for name, value in {**counts, "is_splits": is_splits}.items():
        check_positive_int(name, value)
    if not isinstance(kid_subset_size, int) or kid_subset_size < 2:
        raise ValueError(f"kid_subset_size must be an integer >= 2 (KID compares pairs), got {kid_subset_size!r}")
    if fid_method not in ("sqrtm", "eigh"):
        raise ValueError(f"fid_method must be one of 'sqrtm', 'eigh', got {fid_method!r}")
    if sampler is not None and (class_labels is not None or pipeline_kwargs):
        raise ValueError(
            "class_labels and pipeline arguments go to the sampler when one is given, got "
            f"class_labels={class_labels!r} and {sorted(pipeline_kwargs)}"
        )
    start_time = time.perf_counter()
    if sampler is None:
        batches = sample_images(
            pipe, num_samples, batch_size, seed, class_labels, class_labels_kwarg, **pipeline_kwargs
        )
    else:
        batches = sampler(pipe, num_samples, batch_size, seed)
    fake_stats, fake_features, fake_logits, correct, labelled = None, [], [], [], class_labels is not None
    for images, labels in batches:
        if isinstance(extractor, str):
            extractor = _extractor_for(extractor, images.shape[-1], pipe.device, digits_cache_dir)
        features, logits = extractor.features_and_logits(images)
        fake_stats = fake_stats if fake_stats is not None else GaussianStatistics(features.shape[1])
        fake_stats.update(features)
        fake_features.append(features)
        if extractor.has_logits:
            fake_logits.append(logits)
        labelled = labelled or labels is not None
        if labels is not None and hasattr(extractor, "classify"):
            correct.append(logits.argmax(dim=-1) == labels)
    resolution = int(images.shape[-1])
    sampling_seconds = time.perf_counter() - start_time
    real_features = reference
    if not isinstance(reference, torch.Tensor):
        real_features = reference_features(
            reference, extractor, resolution, reference_num_samples, split=reference_split
        )
    metrics = compute_metrics(
        real_features,
        fake_stats,
        torch.cat(fake_features),
        torch.cat(fake_logits) if fake_logits else None,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        pr_k=pr_k,
        is_splits=is_splits,
        fid_method=fid_method,
        seed=seed,
        device=extractor.device,
    )
    if correct:
        metrics["class_accuracy"] = float(torch.cat(correct).float().mean())
    elif labelled:
        logger.warning(f"class accuracy needs a classifier extractor with classify(); {extractor.name!r} has none")
    reference_name = "features" if isinstance(reference, torch.Tensor) else os.fspath(reference)
    return {
        **metrics,
        "num_samples": num_samples,
        "num_reference": int(real_features.shape[0]),
        "reference": reference_name,
        "feature_extractor": extractor.name,
        "feature_dim": int(real_features.shape[1]),
        "resolution": resolution,
        "seed": seed,
        "sampling_seconds": sampling_seconds,
        "total_seconds": time.perf_counter() - start_time,
    }


def _extractor_for(name: str, resolution: int, device: torch.device, cache_dir: str | None) -> FeatureExtractor:
    if name == "digits":
        return build_feature_extractor("digits", resolution=resolution, device=device, cache_dir=cache_dir)
    else:
        raise ValueError(
            f"extractor given by name must be 'digits' (build others with build_feature_extractor), got {name!r}"
        )
