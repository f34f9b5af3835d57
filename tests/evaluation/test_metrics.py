import itertools
import math

import numpy as np
import pytest
import torch

from custom_pipelines.evaluation.metrics import (
    GaussianStatistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    mmd2_unbiased,
    precision_recall,
)


def _gaussian(n, mean, cov, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n))


def _random_spd(dim, seed):
    a = np.random.default_rng(seed).normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


# ---- Gaussian statistics -------------------------------------------------------------------------------------


def test_streaming_statistics_match_numpy():
    x = torch.randn(1000, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 5
    stats = GaussianStatistics(7)
    for chunk in torch.split(x, [1, 100, 399, 500]):  # uneven batches
        stats.update(chunk.float())
    np.testing.assert_allclose(stats.mean, x.float().double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x.float().double().numpy(), rowvar=False), rtol=1e-9)
    assert stats.count == 1000
    assert np.array_equal(stats.covariance, stats.covariance.T)


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="shape"):
        GaussianStatistics(4).update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2"):
        _ = GaussianStatistics(4).update(torch.zeros(1, 4)).covariance
    with pytest.raises(ValueError, match="dim"):
        GaussianStatistics(0)


# ---- FID -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_of_a_distribution_with_itself_is_zero(method):
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    assert abs(fid_from_features(x, x, method=method)) < 1e-6


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_closed_form_for_diagonal_covariances(method):
    # Commuting covariances: Tr((Σ1Σ2)^½) = Σ √(a_i b_i), so d² = ‖μ1−μ2‖² + Σ (√a_i − √b_i)².
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(7.25 + 4 + 1)


def test_fid_methods_agree_on_general_covariances():
    sigma1, sigma2 = _random_spd(20, 0), _random_spd(20, 1)
    mu1, mu2 = np.zeros(20), np.full(20, 0.1)
    by_sqrtm = frechet_distance(mu1, sigma1, mu2, sigma2, method="sqrtm")
    by_eigh = frechet_distance(mu1, sigma1, mu2, sigma2, method="eigh")
    assert by_sqrtm == pytest.approx(by_eigh, rel=1e-9)
    # 1-D: d² = (μ1−μ2)² + (σ1−σ2)²
    assert frechet_distance([1.0], [[4.0]], [0.0], [[1.0]]) == pytest.approx(1.0 + 1.0)


def test_fid_from_samples_matches_closed_form():
    cov1, cov2 = _random_spd(4, 2), _random_spd(4, 3)
    mean1, mean2 = np.zeros(4), np.array([0.5, -0.5, 0.0, 1.0])
    expected = frechet_distance(mean1, cov1, mean2, cov2)
    estimated = fid_from_features(_gaussian(200_000, mean1, cov1, 0), _gaussian(200_000, mean2, cov2, 1))
    assert estimated == pytest.approx(expected, abs=0.02)
    assert expected > 1.0  # a meaningful distance, not a trivially small one


def test_fid_with_singular_covariances_is_finite():
    # 16 samples in 64 dimensions: rank-deficient covariances, the usual case for tiny evaluation runs.
    x, y = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="16 samples in 64 dimensions"):
        by_eigh, by_sqrtm = fid_from_features(x, y, method="eigh"), fid_from_features(x, y, method="sqrtm")
    assert math.isfinite(by_eigh) and by_sqrtm == pytest.approx(by_eigh, rel=1e-6)


def test_fid_sqrtm_falls_back_to_eps_offset(monkeypatch):
    import scipy.linalg

    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def failing_once(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", failing_once)
    sigma = np.diag([1.0, 0.0])  # singular
    with pytest.warns(UserWarning, match="adding 0.001 to the diagonal"):
        fid = frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma, eps=1e-3)
    np.testing.assert_allclose(calls[1], (sigma + 1e-3 * np.eye(2)) @ (sigma + 1e-3 * np.eye(2)))
    # Tr(Σ + Σ − 2(Σ+εI)) = −4ε·... : the offset only perturbs the result at the order of eps.
    assert abs(fid) < 1e-2


def test_fid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma2 has NaN/inf entries"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))


# ---- KID -------------------------------------------------------------------------------------------------------


def _naive_mmd2_unbiased(x, y):
    d = len(x[0])

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_equals_naive_computation():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    naive = _naive_mmd2_unbiased(x.tolist(), y.tolist())
    assert mmd2_unbiased(x, y) == pytest.approx(naive, rel=1e-12)
    # One subset of all samples is a permutation of the full sets: the same estimate, and std 0.
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=6)
    assert mean == pytest.approx(naive, rel=1e-12) and std == 0.0


def test_kid_is_unbiased_for_equal_distributions():
    generator = torch.Generator().manual_seed(0)

    def sample(shift=0.0):
        return torch.randn(50, 8, generator=generator, dtype=torch.float64) + shift

    estimates = np.array([mmd2_unbiased(sample(), sample()) for _ in range(200)])
    standard_error = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean()) < 3 * standard_error
    assert (estimates < 0).any() and (estimates > 0).any()  # an unbiased estimate of 0 takes both signs
    assert mmd2_unbiased(sample(), sample(shift=1.0)) > 20 * estimates.std()


def test_kid_subsets_are_seeded_and_capped():
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(30, 4, generator=torch.Generator().manual_seed(1)) + 1
    a = kernel_inception_distance(x, y, num_subsets=5, subset_size=1000, generator=torch.Generator().manual_seed(7))
    b = kernel_inception_distance(x, y, num_subsets=5, subset_size=1000, generator=torch.Generator().manual_seed(7))
    c = kernel_inception_distance(x, y, num_subsets=5, subset_size=10, generator=torch.Generator().manual_seed(8))
    assert a == b and a[1] > 0 and a != c and a[0] > 0
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(x[:1], y)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(x, y, num_subsets=0)


# ---- precision / recall ----------------------------------------------------------------------------------------


def test_precision_recall_of_identical_sets_is_one():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_half_covered_and_batched():
    generator = torch.Generator().manual_seed(0)
    cluster = torch.randn(150, 4, generator=generator)
    real = torch.cat([cluster, cluster + 50.0])  # two far-apart modes
    fake = cluster + 0.01 * torch.randn(cluster.shape, generator=generator)  # mode collapse onto the first
    assert precision_recall(real, fake, k=3) == (1.0, 0.5)
    # Tiny distance blocks give the same answer as one big block.
    assert precision_recall(real, fake, k=3, max_elements=1000) == (1.0, 0.5)
    assert precision_recall(fake, real, k=3, max_elements=1000) == (0.5, 1.0)


def test_precision_recall_rejects_bad_input():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(x, x)
    with pytest.raises(ValueError, match="k must"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="equal D"):
        precision_recall(torch.randn(10, 2), torch.randn(10, 3))


# ---- Inception Score -------------------------------------------------------------------------------------------


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(torch.full((100, 10), 0.1))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_distinct_predictions_is_num_classes():
    probs = torch.eye(10).repeat(10, 1)  # 100 one-hot rows; each split of 10 holds every class once
    mean, std = inception_score(probs, num_splits=10)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # All samples confidently the same class: no diversity, IS = 1.
    assert inception_score(torch.eye(10)[[3] * 50], num_splits=5)[0] == pytest.approx(1.0)


def test_inception_score_rejects_bad_input():
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(torch.full((5, 10), 0.1), num_splits=6)
    with pytest.raises(ValueError, match="shape"):
        inception_score(torch.full((10,), 0.1))
