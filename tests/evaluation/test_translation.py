"""Translation scores: the domain classifier, target-domain rates, cycle and identity errors, on the digits-thick
stand-in pair with translators whose answers are known (identity, the exact dilation, a shape-breaking one)."""

import pytest
import torch.nn.functional as F

from custom_pipelines.data.loading import ImageTransform
from custom_pipelines.data.unpaired import ImageDomain, digits_thick_domains
from custom_pipelines.evaluation.translation import fit_domain_classifier, translation_scores


@pytest.fixture(scope="module")
def data():
    domains = digits_thick_domains(16)
    transform = ImageTransform(16, 1, center_crop=True)

    def stack(dataset, n=None):
        domain = ImageDomain(dataset, transform)
        return domain.first(n or len(domain))

    classifier = fit_domain_classifier(stack(domains.train_a, 300), stack(domains.train_b, 300))
    return classifier, stack(domains.test_a), stack(domains.test_b)


def dilate(x):  # the 3×3 grey dilation that made domain B (on [-1, 1] pixels: max commutes with the affine map)
    return F.max_pool2d(x, 3, stride=1, padding=1)


def test_identity_translators_score_the_floor_and_cycle_perfectly(data):
    classifier, test_a, test_b = data
    scores = translation_scores(lambda x: x, lambda x: x, test_a, test_b, classifier)
    assert scores["classifier_accuracy_real"] > 0.95
    assert scores["a_to_b_rate"] == scores["untranslated_a_rate"] < 0.05
    assert scores["b_to_a_rate"] == scores["untranslated_b_rate"] < 0.05
    assert scores["cycle_l1_a"] == scores["cycle_l1_b"] == scores["identity_l1_a"] == scores["identity_l1_b"] == 0


def test_the_true_mapping_reaches_the_target_domain(data):
    classifier, test_a, test_b = data
    scores = translation_scores(dilate, lambda x: x, test_a, test_b, classifier)
    assert scores["a_to_b_rate"] > 0.9  # thickened A reads as B
    assert scores["cycle_l1_a"] > 0.05 and scores["identity_l1_b"] > 0  # b_to_a does not undo it; B grows again


def test_bad_translators_and_inputs_raise(data):
    classifier, test_a, test_b = data
    with pytest.raises(ValueError, match="a_to_b must keep the shape"):
        translation_scores(lambda x: x[..., :8, :8], lambda x: x, test_a, test_b, classifier)
    with pytest.raises(ValueError, match=r"images must be a tensor \[N, C, H, W\]"):
        fit_domain_classifier(test_a[0], test_b)
