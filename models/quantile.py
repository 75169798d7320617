"""TabDDPM's official numeric preprocessing: quantile normalisation to a normal, its inverse, discrete rounding."""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

BOUNDS = 1e-7       # sklearn.preprocessing QuantileTransformer's BOUNDS_THRESHOLD
MAX_LEVELS = 32     # scripts/sample.py: a numeric column with at most 32 distinct training values is discrete
NORMALIZATIONS = ("quantile", "none")


def n_quantiles(n_rows: int) -> int:
    """lib/data.py normalize('quantile'): n_quantiles = max(min(n_train // 30, 1000), 10)."""
    return max(min(n_rows // 30, 1000), 10)


def inverse_quantile(z: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """QuantileTransformer(output_distribution="normal").inverse_transform from its fitted `quantiles_` (n_quantiles x
    columns; the references are evenly spaced on [0, 1]): p = Φ(z), linear interpolation between the quantiles at
    p (n_quantiles - 1), and p within BOUNDS of 0 or 1 mapped to the extreme quantiles. Vectorised over columns."""
    p = ndtr(np.asarray(z, dtype=np.float64))
    nq, cols = len(quantiles), np.arange(quantiles.shape[1])
    pos = np.clip(p, 0.0, 1.0) * (nq - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), nq - 2)
    x = quantiles[lo, cols] + (pos - lo) * (quantiles[lo + 1, cols] - quantiles[lo, cols])
    x = np.where(p + BOUNDS > 1.0, quantiles[-1], x)
    return np.where(p - BOUNDS < 0.0, quantiles[0], x)


def discrete_levels(X: np.ndarray) -> np.ndarray:
    """Per column the sorted distinct training values when there are at most MAX_LEVELS of them, NaN-padded to
    (columns, MAX_LEVELS); an all-NaN row marks a column that is not discrete."""
    Xs = np.sort(X, axis=0)
    new = np.vstack([np.ones((1, X.shape[1]), bool), Xs[1:] != Xs[:-1]])
    counts = new.sum(0)
    levels = np.full((X.shape[1], MAX_LEVELS), np.nan)
    for j in np.flatnonzero(counts <= MAX_LEVELS):  # a loop over the few discrete continuous columns, not rows
        levels[j, :counts[j]] = Xs[new[:, j], j]
    return levels


def round_to_levels(X: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """lib/data.py round_columns: each value of a discrete column becomes the nearest of its training values (the
    lower one at an exact midpoint, as cdist's argmin)."""
    out = X.copy()
    for j in np.flatnonzero(~np.isnan(levels).all(1)):  # the discrete columns only
        lv = levels[j][~np.isnan(levels[j])]
        out[:, j] = lv[np.searchsorted((lv[1:] + lv[:-1]) / 2, X[:, j], side="left")]
    return out
