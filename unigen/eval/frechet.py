"""Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})      (Dowson & Landau 1982;
                                                                      Heusel et al. 2017)
tr((S1 S2)^{1/2}) is computed as tr((A S2 A)^{1/2}) with A = S1^{1/2}: S1 S2 is similar to
the symmetric PSD matrix A S2 A (A^{-1} (A S2 A) A = S1 S2), so its eigenvalues are real and
non-negative. Both square roots come from `eigh` with round-off negatives clipped to 0,
so rank-deficient covariances (few samples, dead ReLU features) need no eps offset,
unlike scipy.linalg.sqrtm on the non-symmetric product.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of (N, D) features; N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N>=2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes disagree: mu1 {mu1.shape}, mu2 {mu2.shape}, "
                         f"sigma1 {s1.shape}, sigma2 {s2.shape}")
    a = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(a @ ((s2 + s2.T) / 2) @ a)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    return float(max(fd, 0.0))  # tiny negative values are round-off of a zero distance


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
