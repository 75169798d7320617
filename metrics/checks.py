"""Input checks shared by the metrics: one-sentence errors for synthetic data a metric cannot score."""
from __future__ import annotations

import numpy as np

from data import EHRData


def checked_synth(data: EHRData, synth: np.ndarray, min_rows: int = 1) -> np.ndarray:
    """Return synth as float32 after checking width, finiteness, binary columns and the row count."""
    S = np.asarray(synth)
    if S.ndim != 2:
        raise ValueError(f"synthetic data must be 2-D (records x features), got shape {S.shape}")
    if S.shape[1] != data.n_features:
        raise ValueError(f"synthetic data has {S.shape[1]} columns, the dataset has {data.n_features}")
    if len(S) < min_rows:
        raise ValueError(f"synthetic data has {len(S)} rows, this metric needs at least {min_rows}")
    S = S.astype(np.float32, copy=False)
    bad = ~np.isfinite(S)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"synthetic data has a non-finite value in row {i}, column {data.columns[j]}")
    B = S[:, data.binary_mask]
    nb = (B != 0) & (B != 1)
    if nb.any():
        i, jb = np.argwhere(nb)[0]
        j = np.flatnonzero(data.binary_mask)[jb]
        raise ValueError(f"synthetic data has non-binary value {S[i, j]} in binary column {data.columns[j]} (row {i})")
    return S


def code_mask(data: EHRData, what: str) -> np.ndarray:
    """Boolean mask of the binary non-label columns (the codes); a clear error when there are none."""
    labels = set(data.label_columns)
    m = data.binary_mask & np.array([c not in labels for c in data.columns], dtype=bool)
    if not m.any():
        raise ValueError(f"the dataset {data.name} has no binary code columns, so {what} is undefined")
    return m


def continuous_mask(data: EHRData, what: str) -> np.ndarray:
    """Boolean mask of the continuous columns; a clear error when there are none."""
    m = ~data.binary_mask
    if not m.any():
        raise ValueError(f"the dataset {data.name} has no continuous columns, so {what} is undefined")
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
