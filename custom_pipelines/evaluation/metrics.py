"""Sample-quality metrics computed from feature batches: FID, KID, precision/recall and Inception Score.

Every metric takes plain `[N, D]` feature tensors (or `[N, C]` class probabilities for IS), so any feature
extractor can be plugged in. Sums and matrix algebra run in float64; the FID statistics are accumulated batch
by batch so 50k samples never need to sit in one covariance computation.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.linalg
import torch


class GaussianStatistics:
    """Streaming mean and covariance of feature vectors (the Gaussian fitted by FID).

    Keeps the running sum Σx and the running sum of outer products Σxxᵀ in float64, so batches can be added one
    at a time and the statistics of 50k samples cost one `[D, D]` matrix of memory.

    Args:
        dim (`int`): feature dimension D.
    """

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> GaussianStatistics:
        """Add a `[B, D]` batch of features; returns `self` so calls can be chained."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must have shape [B, {self.dim}], got {tuple(features.shape)}")
        x = features.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"features must be finite, got {int((~torch.isfinite(x)).sum())} NaN/inf values (from non-finite "
                "images: a diverged sampler?)"
            )
        self.count += x.shape[0]
        self.sum += x.sum(dim=0)
        self.sum_outer += x.T @ x
        return self

    @classmethod
    def from_features(cls, features: torch.Tensor, batch_size: int = 4096) -> GaussianStatistics:
        """Statistics of a whole `[N, D]` feature tensor, accumulated in batches."""
        stats = cls(features.shape[1])
        for start in range(0, features.shape[0], batch_size):
            stats.update(features[start : start + batch_size])
        return stats

    @property
    def mean(self) -> np.ndarray:
        """μ = Σx / n, float64 `[D]`."""
        if self.count < 1:
            raise ValueError("GaussianStatistics has no samples yet; call update() first")
        return (self.sum / self.count).numpy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance Σ = (Σxxᵀ − n μμᵀ) / (n − 1), float64 `[D, D]` (same as `np.cov(rowvar=False)`)."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 samples, got {self.count}")
        mu = self.sum / self.count
        cov = (self.sum_outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return ((cov + cov.T) / 2).numpy()  # symmetric up to rounding; make it exactly so


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr((Σ1Σ2)^½) with scipy's Schur-based `sqrtm`, as in the reference FID code (Heusel et al. 2017)."""
    with warnings.catch_warnings():
        # Singular Σ1Σ2 (N ≤ D) is handled below and announced by fid_from_statistics; scipy's own note is noise.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Σ1Σ2 is singular (fewer samples than dimensions): add eps·I to both covariances, as the reference does.
        warnings.warn(f"FID: Σ1Σ2 is singular; adding {eps} to the diagonal of both covariances", stacklevel=3)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Σ1Σ2 has real non-negative eigenvalues in exact arithmetic; rounding leaves tiny imaginary parts.
        max_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if max_imag > 1e-3:
            raise ValueError(
                f"FID: sqrtm(Σ1Σ2) has an imaginary component of {max_imag:.3g} > 1e-3; use more samples "
                "or method='eigh'"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ1Σ2)^½) = Σᵢ √λᵢ(Σ1^½ Σ2 Σ1^½): the same eigenvalues, but of a symmetric PSD matrix, so no complex parts.

    Negative eigenvalues from rounding are clipped to 0, which also makes singular covariances safe.
    """
    eigvals1, eigvecs1 = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (eigvecs1 * np.sqrt(np.clip(eigvals1, 0, None))) @ eigvecs1.T
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigvals, 0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: Literal["sqrtm", "eigh"] = "sqrtm",
) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Heusel et al. 2017, "GANs trained by a two time-scale...").

    d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), all in float64.

    Args:
        mu1, mu2 (`np.ndarray` `[D]`): means. sigma1, sigma2 (`np.ndarray` `[D, D]`): covariances.
        eps (`float`, defaults to 1e-6): with `method="sqrtm"`, added to both diagonals when Σ1Σ2 is singular and
            `sqrtm` returns non-finite values (the reference implementation's fix).
        method (`"sqrtm"` or `"eigh"`, defaults to `"sqrtm"`): `"sqrtm"` is scipy's matrix square root, matching
            pytorch-fid; `"eigh"` uses the symmetric form Tr((Σ1^½Σ2Σ1^½)^½), exact for singular covariances too.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"mean/covariance shapes do not match: mu1 {mu1.shape}, mu2 {mu2.shape}, "
            f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(
                f"FID: {name} has NaN/inf entries; the images it came from are not finite (a diverged sampler?)"
            )
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"method must be one of 'sqrtm', 'eigh', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_statistics(
    stats1: GaussianStatistics,
    stats2: GaussianStatistics,
    eps: float = 1e-6,
    method: Literal["sqrtm", "eigh"] = "sqrtm",
) -> float:
    """FID between two accumulated feature distributions.

    FID is biased upwards for small sample counts (strongly when N ≤ D): compare only runs with equal N.
    """
    if min(stats1.count, stats2.count) <= stats1.dim:
        warnings.warn(
            f"FID from {min(stats1.count, stats2.count)} samples in {stats1.dim} dimensions: the covariances are "
            "singular and the value is strongly biased; compare only runs with the same sample counts",
            stacklevel=2,
        )
    return frechet_distance(stats1.mean, stats1.covariance, stats2.mean, stats2.covariance, eps=eps, method=method)


def fid_from_features(
    features1: torch.Tensor, features2: torch.Tensor, eps: float = 1e-6, method: Literal["sqrtm", "eigh"] = "sqrtm"
) -> float:
    """FID between two `[N, D]` feature tensors."""
    stats1, stats2 = GaussianStatistics.from_features(features1), GaussianStatistics.from_features(features2)
    return fid_from_statistics(stats1, stats2, eps=eps, method=method)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy / d + 1)³, the KID kernel (Bińkowski et al. 2018, sec. 3)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² estimate (Gretton et al. 2012, eq. 3) between samples x `[m, D]` and y `[n, D]`."""
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    # The diagonal k(xᵢ, xᵢ) is left out of the within-sample terms: that is what makes the estimate unbiased.
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(term_xx + term_yy - 2 * k_xy.mean())


def kernel_inception_distance(
    features1: torch.Tensor,
    features2: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel, averaged over random subsets.

    Args:
        features1 (`torch.Tensor` `[m, D]`), features2 (`torch.Tensor` `[n, D]`): the two feature sets.
        num_subsets (`int`, defaults to 100): how many subset pairs are drawn.
        subset_size (`int`, defaults to 1000): samples per subset, drawn without replacement; capped at min(m, n).
        generator (`torch.Generator`, *optional*): seeds the subset draws (defaults to a generator seeded with 0).
        device (`str` or `torch.device`, defaults to `"cpu"`): where the float64 kernel matrices are computed.

    Returns:
        `(mean, std)` of the per-subset MMD² values (std with ddof=0, as the reference code).
    """
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(
            f"features must be [N, D] with equal D, got {tuple(features1.shape)}, {tuple(features2.shape)}"
        )
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    size = min(subset_size, features1.shape[0], features2.shape[0])
    if size < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got subset_size={subset_size} and {size} samples")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x_all, y_all = features1.detach().to(device, torch.float64), features2.detach().to(device, torch.float64)
    values = []
    for _ in range(num_subsets):
        # Indices are drawn on the CPU generator, so the subsets do not depend on the device.
        x = x_all[torch.randperm(x_all.shape[0], generator=generator)[:size].to(device)]
        y = y_all[torch.randperm(y_all.shape[0], generator=generator)[:size].to(device)]
        values.append(mmd2_unbiased(x, y))
    return float(np.mean(values)), float(np.std(values))


def _pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖aᵢ − bⱼ‖² via ‖a‖² + ‖b‖² − 2abᵀ (one matmul), clamped at 0 against rounding."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return sq.clamp_min_(0)


def _rows_per_batch(num_columns: int, max_elements: int) -> int:
    return max(1, max_elements // max(num_columns, 1))


def knn_radii_sq(features: torch.Tensor, k: int = 3, max_elements: int = 2**24) -> torch.Tensor:
    """Squared distance from each sample to its k-th nearest neighbour in the same set (itself excluded)."""
    if features.shape[0] <= k:
        raise ValueError(f"the k-NN manifold needs more than k={k} samples, got {features.shape[0]}")
    radii = []
    step = _rows_per_batch(features.shape[0], max_elements)
    for start in range(0, features.shape[0], step):
        sq = _pairwise_sq_dists(features[start : start + step], features)
        # The (k+1)-th smallest, since each sample is at distance 0 from itself.
        radii.append(sq.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _fraction_inside_manifold(
    queries: torch.Tensor, manifold: torch.Tensor, radii_sq: torch.Tensor, max_elements: int
) -> float:
    """Share of queries within the k-NN ball of at least one manifold sample (Kynkäänniemi et al. 2019, eq. 1)."""
    inside = 0
    step = _rows_per_batch(manifold.shape[0], max_elements)
    for start in range(0, queries.shape[0], step):
        sq = _pairwise_sq_dists(queries[start : start + step], manifold)
        inside += int((sq <= radii_sq[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    k: int = 3,
    max_elements: int = 2**24,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifold estimates.

    Precision: share of generated samples inside the real manifold (the union of balls around each real sample
    with radius = distance to its k-th nearest real neighbour). Recall: share of real samples inside the generated
    manifold built the same way.

    Args:
        real_features (`torch.Tensor` `[N, D]`), fake_features (`torch.Tensor` `[M, D]`): the two feature sets.
        k (`int`, defaults to 3): neighbourhood size of the manifold estimate (the paper's default).
        max_elements (`int`, defaults to 2**24): distance-matrix block size, so 50k × 50k never sits in memory.
        device (`str` or `torch.device`, defaults to `"cpu"`): where the float64 distances are computed; 50k × 50k
            samples of 2048-d features are ~10 TFLOP, so use a GPU at that scale.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if real_features.ndim != 2 or fake_features.ndim != 2 or real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"features must be [N, D] with equal D, got {tuple(real_features.shape)}, {tuple(fake_features.shape)}"
        )
    real, fake = real_features.detach().to(device, torch.float64), fake_features.detach().to(device, torch.float64)
    real_radii, fake_radii = knn_radii_sq(real, k, max_elements), knn_radii_sq(fake, k, max_elements)
    precision = _fraction_inside_manifold(fake, real, real_radii, max_elements)
    recall = _fraction_inside_manifold(real, fake, fake_radii, max_elements)
    return precision, recall


def inception_score(probs: torch.Tensor, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) ‖ p(y))), computed per split.

    Args:
        probs (`torch.Tensor` `[N, C]`): class probabilities p(y|x), rows summing to 1.
        num_splits (`int`, defaults to 10): the samples are cut into this many contiguous splits, as the reference.

    Returns:
        `(mean, std)` over the splits (std with ddof=0, as the reference code). Ranges from 1 to C.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {tuple(probs.shape)}")
    if not 1 <= num_splits <= probs.shape[0]:
        raise ValueError(f"num_splits must be in [1, {probs.shape[0]}] (the number of samples), got {num_splits}")
    p = probs.detach().cpu().double()
    if not bool(((p >= 0) & (p <= 1)).all()):  # also refuses NaN
        raise ValueError("probs must be class probabilities in [0, 1] (softmax of the logits), got values outside")
    scores = []
    for split in torch.tensor_split(p, num_splits):
        p_y = split.mean(dim=0, keepdim=True)
        # KL(p(y|x) ‖ p(y)) = Σ_y p log p − p log p(y); xlogy makes 0·log 0 = 0 for confident predictions.
        kl = (torch.special.xlogy(split, split) - torch.special.xlogy(split, p_y)).sum(dim=1)
        scores.append(float(torch.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
