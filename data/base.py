"""The EHRData container, the dataset registry and the patient-level split shared by every loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

KINDS = ("binary", "continuous")

DATASETS: dict[str, Callable[..., "EHRData"]] = {}


def register_dataset(name: str) -> Callable:
    """Decorator: register a loader function `fn(**cfg) -> EHRData` under `name`."""

    def wrap(fn: Callable[..., EHRData]) -> Callable[..., EHRData]:
        if name in DATASETS:
            raise ValueError(f"dataset '{name}' is already registered")
        DATASETS[name] = fn
        return fn

    return wrap


def load_dataset(name: str, **kwargs: Any) -> "EHRData":
    """Build the dataset `name` with loader keyword arguments (the data YAML minus `name`)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset '{name}'; valid choices: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)


def check_matrix(X: np.ndarray, kinds: Sequence[str], where: str, columns: Sequence[str] | None = None) -> None:
    """Raise ValueError with one sentence if X is not a finite 2-D matrix whose binary columns hold only 0/1."""
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D patients x features array, got {getattr(X, 'shape', type(X))}")
    if X.shape[1] != len(kinds):
        raise ValueError(f"{where}: expected {len(kinds)} feature columns, got {X.shape[1]}")
    names = list(columns) if columns is not None else [f"column {j}" for j in range(X.shape[1])]
    finite = np.isfinite(X)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise ValueError(f"{where}: non-finite value {X[i, j]} in row {i}, {names[j]}; expected finite numbers")
    binary = np.asarray([k == "binary" for k in kinds])
    if binary.any():
        B = X[:, binary]
        bad = (B != 0) & (B != 1)
        if bad.any():
            i, jb = np.argwhere(bad)[0]
            j = np.flatnonzero(binary)[jb]
            raise ValueError(f"{where}: non-binary value {X[i, j]} in row {i}, {names[j]}; binary columns hold only 0 or 1")


@dataclass(frozen=True)
class EHRData:
    """Patient x feature matrices split by patient, with column names, kinds and downstream labels.

    Labels are ordinary columns of the matrix (generators learn them jointly with the codes).
    """

    train: np.ndarray
    holdout: np.ndarray
    test: np.ndarray
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    label_columns: tuple[str, ...] = ()
    name: str = "unnamed"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "label_columns", tuple(self.label_columns))
        if len(self.columns) != len(self.kinds):
            raise ValueError(f"{self.name}: {len(self.columns)} column names but {len(self.kinds)} column kinds")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"{self.name}: unknown column kind {unknown[0]!r}; valid choices: {', '.join(KINDS)}")
        if len(set(self.columns)) != len(self.columns):
            dup = next(c for i, c in enumerate(self.columns) if c in self.columns[:i])
            raise ValueError(f"{self.name}: duplicated column name {dup!r}")
        missing = [c for c in self.label_columns if c not in self.columns]
        if missing:
            raise ValueError(f"{self.name}: label column {missing[0]!r} is not among the columns")
        for split in ("train", "holdout", "test"):
            X = np.ascontiguousarray(getattr(self, split), dtype=np.float32)
            check_matrix(X, self.kinds, f"{self.name} {split} split", self.columns)
            object.__setattr__(self, split, X)
        if len(self.train) == 0:
            raise ValueError(f"{self.name}: the train split is empty")

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def binary_mask(self) -> np.ndarray:
        return np.asarray([k == "binary" for k in self.kinds])

    def index(self, column: str) -> int:
        """Position of a column by name (clear error listing a few valid names)."""
        try:
            return self.columns.index(column)
        except ValueError:
            raise KeyError(f"{self.name}: no column {column!r}; e.g. {', '.join(self.columns[:5])}") from None


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded patient-level permutation cut into train/holdout/test index arrays by `fractions`."""
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (train, holdout, test) summing to 1, got {list(fractions)}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fr[0] * n))
    n_hold = int(round(fr[1] * n))
    return perm[:n_train], perm[n_train:n_train + n_hold], perm[n_train + n_hold:]


def from_matrix(
    X: np.ndarray,
    columns: Sequence[str],
    kinds: Sequence[str],
    *,
    name: str,
    label_columns: Sequence[str] = (),
    meta: Mapping | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> EHRData:
    """Split one patient matrix (one row per patient) into an EHRData by patient."""
    tr, ho, te = split_indices(len(X), split, split_seed)
    meta = dict(meta or {})
    meta.setdefault("split", {"fractions": list(map(float, split)), "seed": split_seed,
                              "n_train": len(tr), "n_holdout": len(ho), "n_test": len(te)})
    return EHRData(X[tr], X[ho], X[te], tuple(columns), tuple(kinds), tuple(label_columns), name, meta)
