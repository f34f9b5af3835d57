"""How well an unpaired translator (CycleGAN) works, without paired ground truth.

- target-domain rate: a domain classifier trained on *real* A vs real B (logistic regression on pixels, seeded)
  labels translated held-out images; the share labelled as the target domain (A→B as B, B→A as A). The same
  classifier on the untranslated images gives the floor (its error rate), on real targets the ceiling (its
  accuracy).
- cycle error: mean |x − G_BA(G_AB(x))| (and the other way) in [0, 1] pixel units.
- identity error: mean |y − G_AB(y)| on the target domain's own images (CycleGAN's identity term: a generator
  should leave images already in its target domain alone).

Translators are callables on [N, C, H, W] tensors in [-1, 1], so a pipeline, a bare generator or a hand-written
oracle can be scored alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Translator = Callable[[torch.Tensor], torch.Tensor]


def _features(images: torch.Tensor) -> np.ndarray:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images))}")
    return images.detach().float().cpu().flatten(1).numpy()


def fit_domain_classifier(real_a: torch.Tensor, real_b: torch.Tensor, seed: int = 0):
    """A logistic-regression classifier of domain B (label 1) vs A (label 0) on raw pixels."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([_features(real_a), _features(real_b)])
    y = np.concatenate([np.zeros(len(real_a)), np.ones(len(real_b))])
    return LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x, y)


def _rate_b(classifier, images: torch.Tensor) -> float:
    return float(classifier.predict(_features(images)).mean())


def _l1_01(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.float() - y.float()).abs().mean() / 2)  # [-1, 1] → [0, 1] units


@torch.no_grad()
def translation_scores(
    a_to_b: Translator, b_to_a: Translator, test_a: torch.Tensor, test_b: torch.Tensor, classifier
) -> dict[str, float]:
    """Target-domain rates, cycle and identity errors of a translator pair on held-out images of each domain."""
    fake_b, fake_a = a_to_b(test_a), b_to_a(test_b)
    for name, fake, real in (("a_to_b", fake_b, test_a), ("b_to_a", fake_a, test_b)):
        if fake.shape != real.shape:
            raise ValueError(f"{name} must keep the shape {tuple(real.shape)}, got {tuple(fake.shape)}")
    return {
        "classifier_accuracy_real": (1 - _rate_b(classifier, test_a) + _rate_b(classifier, test_b)) / 2,
        "a_to_b_rate": _rate_b(classifier, fake_b),
        "b_to_a_rate": 1 - _rate_b(classifier, fake_a),
        "untranslated_a_rate": _rate_b(classifier, test_a),  # real A already labelled B: the floor
        "untranslated_b_rate": 1 - _rate_b(classifier, test_b),
        "cycle_l1_a": _l1_01(b_to_a(fake_b), test_a),
        "cycle_l1_b": _l1_01(a_to_b(fake_a), test_b),
        "identity_l1_b": _l1_01(a_to_b(test_b), test_b),
        "identity_l1_a": _l1_01(b_to_a(test_a), test_a),
    }
