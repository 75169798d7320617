"""Input checks shared by the metrics: one-sentence errors for synthetic data a metric cannot score."""
from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable

import numpy as np

from ehrbench.data import EHRData

from .registry import NotApplicable

CHECK_ROWS = 8192


def checked_synth(data: EHRData, synth: np.ndarray, min_rows: int = 1) -> np.ndarray:
    """Return synth as float32 after checking width, finiteness, binary columns and the row count.

    Scans row chunks of CHECK_ROWS so the check needs no full-size temporaries (it runs once per metric).
    """
    S = np.asarray(synth)
    if S.ndim != 2:
        raise ValueError(f"synthetic data must be 2-D (records x features), got shape {S.shape}")
    if S.shape[1] != data.n_features:
        raise ValueError(f"synthetic data has {S.shape[1]} columns, the dataset has {data.n_features}")
    if len(S) < min_rows:
        raise ValueError(f"synthetic data has {len(S)} rows, this metric needs at least {min_rows}")
    S = S.astype(np.float32, copy=False)
    b = data.binary_mask
    for r0 in range(0, len(S), CHECK_ROWS):
        blk = S[r0:r0 + CHECK_ROWS]
        bad = (blk != 0) & (blk != 1) if b.all() else ~np.isfinite(blk) | (b & (blk != 0) & (blk != 1))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            v = blk[i, j]
            if not np.isfinite(v):
                raise ValueError(f"synthetic data has a non-finite value in row {r0 + i}, column {data.columns[j]}")
            raise ValueError(f"synthetic data has non-binary value {v} in binary column {data.columns[j]} (row {r0 + i})")
    return S


def code_mask(data: EHRData, what: str) -> np.ndarray:
    """Boolean mask of the binary non-label columns (the codes); a clear error when there are none."""
    labels = set(data.label_columns)
    m = data.binary_mask & np.array([c not in labels for c in data.columns], dtype=bool)
    if not m.any():
        raise NotApplicable(f"the dataset {data.name} has no binary code columns, so {what} is undefined")
    return m


def continuous_mask(data: EHRData, what: str) -> np.ndarray:
    """Boolean mask of the continuous columns; a clear error when there are none."""
    m = ~data.binary_mask
    if not m.any():
        raise NotApplicable(f"the dataset {data.name} has no continuous columns, so {what} is undefined")
    return m


def label_index(data: EHRData, label: str | None, what: str) -> int:
    """Column index of the downstream label (default: the dataset's first label column)."""
    if label is None:
        if not data.label_columns:
            raise ValueError(f"the dataset {data.name} declares no label columns, so {what} needs label=<column>")
        label = data.label_columns[0]
    return data.index(label)


def subsample(rng: np.random.Generator, X: np.ndarray, n: int | None) -> np.ndarray:
    """A seeded subsample of min(n, len(X)) rows without replacement, in original row order (all rows if n is None)."""
    if n is None or n >= len(X):
        return X
    return X[np.sort(rng.choice(len(X), size=int(n), replace=False))]


# Statistics of the real data that several metrics need (the real Gram matrix, TRTR) are computed once per
# dataset object. Keys hold a weak reference, so a freed dataset never answers for a new one at the same id().
_REAL_CACHE: dict[tuple, tuple[weakref.ref, Any]] = {}


def real_cached(data: EHRData, key: Hashable, fn: Callable[[], Any]) -> Any:
    """fn() computed once per (dataset object, key); only for values that do not depend on the synthetic data."""
    k = (id(data), key)
    hit = _REAL_CACHE.get(k)
    if hit is not None and hit[0]() is data:
        return hit[1]
    for dead in [c for c, (ref, _) in _REAL_CACHE.items() if ref() is None]:
        del _REAL_CACHE[dead]
    value = fn()
    _REAL_CACHE[k] = (weakref.ref(data), value)
    return value
