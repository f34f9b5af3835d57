"""A tiny CNN trained on scikit-learn's digits: the feature space of "digits-FID" and the judge of class accuracy.

Inception-v3 features mean little for 16×16 grayscale digits, and its weights cannot be bundled; this classifier
is trained by the package itself, deterministically on CPU in a few seconds, on the fixed train split of
`load_digits()` and cached as safetensors, so every user and every run scores digits with the same network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME

from custom_pipelines.evaluation.features import (
    FeatureExtractor,
    check_images,
    load_digits_images,
    quantize_uint8,
    resize,
    to_grayscale,
)
from custom_pipelines.io import make_dir_public

CACHE_ENV_VAR = "CUSTOM_PIPELINES_CACHE"
# Bump when the architecture or training recipe changes, so stale cached classifiers are retrained.
TRAINING_RECIPE_VERSION = 2


class DigitsClassifier(ModelMixin, ConfigMixin):
    """Small CNN for `[B, 1, resolution, resolution]` digit images in [0, 1].

    Two conv → ReLU → max-pool stages, adaptive pooling to 4×4, a `feature_dim` hidden layer (the penultimate
    features used for digits-FID/KID/PR) and a linear head over `num_classes`.

    Args:
        resolution (`int`, defaults to 16): input size the classifier is trained and evaluated at.
        channels (`tuple[int, int]`, defaults to (16, 32)): widths of the two conv stages.
        feature_dim (`int`, defaults to 128): size of the penultimate feature vector.
        num_classes (`int`, defaults to 10).
    """

    @register_to_config
    def __init__(
        self, resolution: int = 16, channels: tuple[int, int] = (16, 32), feature_dim: int = 128, num_classes: int = 10
    ):
        super().__init__()
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {resolution}")
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.hidden = nn.Linear(c2 * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        # Set after training so that E‖f‖²/D = 1 on the train split: the regime KID's kernel (xᵀy/D + 1)³ is made
        # for, and digits-FID values of a familiar size. A buffer, so it is saved with the weights.
        self.register_buffer("feature_scale", torch.ones(()))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features `[B, feature_dim]` and logits `[B, num_classes]` of preprocessed images."""
        x = 2 * images - 1
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        features = F.relu(self.hidden(F.adaptive_avg_pool2d(x, 4).flatten(1)))
        return features * self.feature_scale, self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits `[B, num_classes]` of preprocessed `[B, 1, resolution, resolution]` images in [0, 1]."""
        return self.forward_features(images)[1]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Any `[B, 1 or 3, H, W]` images in [0, 1] → the training input: gray, 8-bit, resized to `resolution`."""
        check_images(images)
        gray = quantize_uint8(to_grayscale(images.clamp(0, 1)))
        return resize(gray, self.config.resolution).to(self.device, self.dtype)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted labels `[B]` and class probabilities `[B, num_classes]` of `[B, C, H, W]` images in [0, 1]."""
        probs = self(self.preprocess(images)).softmax(dim=-1)
        return probs.argmax(dim=-1), probs


def default_cache_dir(resolution: int) -> str:
    """`$CUSTOM_PIPELINES_CACHE/digits_classifier_<res>` (default base `~/.cache/custom_pipelines`)."""
    base = os.environ.get(CACHE_ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "custom_pipelines")
    return os.path.join(base, f"digits_classifier_{resolution}")


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of `images` whose predicted class equals `labels`."""
    return float((model.classify(images)[0].cpu() == labels).float().mean())


def train_digits_classifier(
    resolution: int = 16, num_epochs: int = 15, batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0
) -> tuple[DigitsClassifier, dict]:
    """Train a `DigitsClassifier` on the fixed train split of `load_digits()` (deterministic, CPU, seconds).

    Returns the model (in eval mode) and a dict with the held-out test accuracy and the recipe.
    """
    train_images, train_labels = load_digits_images("train", resolution)
    test_images, test_labels = load_digits_images("test", resolution)
    generator = torch.Generator().manual_seed(seed)
    # fork_rng: seed the weight init without touching the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(resolution=resolution)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(num_epochs):
        order = torch.randperm(train_images.shape[0], generator=generator)
        for batch in torch.split(order, batch_size):
            loss = F.cross_entropy(model(train_images[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        features = model.forward_features(train_images)[0]
        model.feature_scale.fill_(features.pow(2).sum(1).mean().div(features.shape[1]).rsqrt())
    report = {
        "test_accuracy": accuracy(model, test_images, test_labels),
        "train_accuracy": accuracy(model, train_images, train_labels),
        "num_train": int(train_images.shape[0]),
        "num_test": int(test_images.shape[0]),
        "recipe": {"num_epochs": num_epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed},
        "recipe_version": TRAINING_RECIPE_VERSION,
        "feature_scale": float(model.feature_scale),
    }
    return model, report


def _is_valid_cache(cache_dir: str, resolution: int) -> bool:
    report_file = os.path.join(cache_dir, "training_report.json")
    weights_file = os.path.join(cache_dir, SAFETENSORS_WEIGHTS_NAME)
    if not (os.path.isfile(report_file) and os.path.isfile(weights_file)):
        return False
    with open(report_file, encoding="utf-8") as f:
        report = json.load(f)
    return report.get("recipe_version") == TRAINING_RECIPE_VERSION and report.get("resolution") == resolution


def load_digits_classifier(
    resolution: int = 16, cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """The cached digits classifier for `resolution`, trained (once, a few seconds) if the cache lacks it.

    Args:
        resolution (`int`, defaults to 16): input size; use the generated images' size.
        cache_dir (`str`, *optional*): folder holding the classifier; defaults to `default_cache_dir(resolution)`,
            i.e. `~/.cache/custom_pipelines/digits_classifier_<res>` or under `$CUSTOM_PIPELINES_CACHE`.
        device: where the returned model lives.
    """
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(resolution)
    if not _is_valid_cache(cache_dir, resolution):
        model, report = train_digits_classifier(resolution)
        _save_atomically(model, {**report, "resolution": resolution}, cache_dir)
    model = DigitsClassifier.from_pretrained(cache_dir, use_safetensors=True)
    return model.to(device).eval()


def _save_atomically(model: DigitsClassifier, report: dict, cache_dir: str) -> None:
    """Write into a temporary sibling folder, then rename, so parallel processes never read half a cache."""
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".tmp_digits_classifier_", dir=parent)
    make_dir_public(tmp_dir)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    with open(os.path.join(tmp_dir, "training_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    if os.path.isdir(cache_dir):
        shutil.rmtree(cache_dir, ignore_errors=True)  # a stale cache from an older recipe
    try:
        os.rename(tmp_dir, cache_dir)
    except OSError:  # another process finished first; its classifier is the same
        shutil.rmtree(tmp_dir, ignore_errors=True)


class DigitsFeatureExtractor(FeatureExtractor):
    """Penultimate features (128-d) and 10-class logits of the digits classifier.

    Preprocessing (the same as at training): clamp to [0, 1], RGB → gray (BT.601 luma), 8-bit quantisation,
    bilinear antialiased resize to the classifier's resolution.

    Args:
        model (`DigitsClassifier`): e.g. from `load_digits_classifier(resolution)`.
    """

    name = "digits"
    has_logits = True

    def __init__(self, model: DigitsClassifier):
        self.model = model.eval()
        self.feature_dim = model.config.feature_dim

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_features(self.model.preprocess(images))

    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted labels `[B]` and probabilities `[B, 10]` (on CPU)."""
        labels, probs = self.model.classify(images)
        return labels.cpu(), probs.cpu()
