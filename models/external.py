"""The "external" synthesizer: scores samples made by another tool (NPZ/NPY/CSV/Parquet) on the ehrbench leaderboard."""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ehrbench.data import EHRData, check_matrix, split_fingerprint

from .base import Synthesizer, register_synthesizer
from .dp import refuse_private

FORMATS = (".npz", ".npy", ".csv", ".parquet")


def _array(z: Any, key: str, p: Path) -> np.ndarray:
    """One array of an open .npz; an object (pickled) array is refused with the file and the array named."""
    try:
        return z[key]
    except ValueError:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise ValueError(f"{p}: array '{key}' holds Python objects, which are not loaded (pickle); save it as a "
                         f"{'string' if key == 'columns' else 'number'} array, e.g. np.array(names, dtype=str)") from None


def read_matrix(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a records x features matrix and its column names (None for .npy, or .npz without `columns`)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{p}: unsupported file type {suffix or '(none)'}; valid choices: {', '.join(FORMATS)}")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (model.path must name the synthetic data file)")
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if "X" not in z:
                    raise ValueError(f"{p}: the .npz file has no array 'X' (found: {', '.join(z.files) or 'nothing'})")
                X = _array(z, "X", p)
                return np.asarray(X), ([str(c) for c in _array(z, "columns", p)] if "columns" in z else None)
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{p}: not a readable .npz file ({str(e).strip() or type(e).__name__})") from None
    if suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False), None
        except ValueError:
            raise ValueError(f"{p}: the .npy array holds Python objects, which are not loaded (pickle); save a "
                             "number array") from None
    import pandas as pd

    df = pd.read_csv(p) if suffix == ".csv" else pd.read_parquet(p)
    non_numeric = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise ValueError(f"{p}: column {non_numeric[0]!r} is not numeric; every column must hold numbers")
    return df.to_numpy(dtype=np.float32), [str(c) for c in df.columns]


@register_synthesizer("external")
class ExternalSynthesizer(Synthesizer):
    """Samples produced outside ehrbench, loaded from `path` and checked against the dataset.

    fit(data) reads the file, checks the width and the column names against the dataset (the first differing
    column is named; the same names in another order are reordered to the dataset's order), and validates the
    values (finite; binary columns exactly 0/1). sample(n, seed) returns the loaded rows: all of them in file
    order when n >= the number of rows (with a warning if n is larger), otherwise a seeded subsample without
    replacement kept in file order. No parameters are learned (n_params 0); save/load store the matrix.
    """

    n_params = 0  # the samples come from another tool; nothing is trained here

    def __init__(self, path: str | None = None, label: str = "external", fingerprint: str | None = None) -> None:
        self.path = path
        self.label = label              # display name: the leaderboard's model column and the run directory
        self.fingerprint = fingerprint  # of the split the tool trained on (data/export.py); checked when given

    def fit(self, data: EHRData | np.ndarray, trainer: Any = None) -> "ExternalSynthesizer":
        refuse_private(self.name, trainer)
        if self.path is None:
            raise ValueError("model 'external' needs model.path=<file> (.npz with X + columns, .npy, .csv or .parquet)")
        if isinstance(data, EHRData):
            columns, kinds = data.columns, data.kinds
        else:
            X = np.asarray(data)
            if X.ndim != 2:
                raise ValueError(f"external.fit: expected a 2-D patients x features matrix, got shape {X.shape}")
            columns, kinds = tuple(f"x{j}" for j in range(X.shape[1])), ("binary",) * X.shape[1]
        M, names = read_matrix(self.path)
        where = str(self.path)
        if M.ndim != 2:
            raise ValueError(f"{where}: expected a 2-D records x features matrix, got shape {M.shape}")
        if len(M) == 0:
            raise ValueError(f"{where}: the file holds no records")
        M = M.astype(np.float32, copy=False)
        claimed = self.fingerprint or _npz_fingerprint(self.path)
        if claimed is not None and isinstance(data, EHRData) and claimed != split_fingerprint(data):
            raise ValueError(f"{where}: made from a training split with fingerprint {claimed}, but this run's "
                             f"training split is {split_fingerprint(data)} (export the split with the same data "
                             "settings: python run_benchmark.py data=... export.dir=DIR)")
        if names is not None and isinstance(data, EHRData):
            M = _align(M, names, list(columns), where)
        elif M.shape[1] != len(columns):
            raise ValueError(f"{where}: {M.shape[1]} columns, the dataset has {len(columns)}")
        check_matrix(M, kinds, where, columns)
        self.n_features_, self.kinds_, self.columns_ = len(columns), tuple(kinds), tuple(columns)
        self.X_ = np.ascontiguousarray(M)
        return self

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        self._check_fitted()
        rows = len(self.X_)
        if n >= rows:
            if n > rows:
                warnings.warn(f"external: {n} samples requested but {self.path} holds {rows} records; returning all {rows}",
                              stacklevel=2)
            return self.X_.copy()
        idx = np.sort(np.random.default_rng(seed).choice(rows, size=int(n), replace=False))
        return self.X_[idx]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"X": torch.from_numpy(self.X_)}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.X_ = state["X"].numpy().astype(np.float32, copy=False)


def _npz_fingerprint(path: str | Path) -> str | None:
    """The `fingerprint` array of an .npz file (the split the tool trained on), if it has one."""
    if Path(path).suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as z:
        return str(z["fingerprint"]) if "fingerprint" in z.files else None


def _align(M: np.ndarray, names: list[str], columns: list[str], where: str) -> np.ndarray:
    """Check the file's column names against the dataset's; reorder when only the order differs."""
    if names == columns:
        return M
    if len(names) != len(columns):
        extra = next((c for c in names if c not in set(columns)), None)
        missing = next((c for c in columns if c not in set(names)), None)
        detail = f"unexpected column {extra!r}" if extra is not None else f"missing column {missing!r}"
        raise ValueError(f"{where}: {len(names)} columns, the dataset has {len(columns)} ({detail})")
    if sorted(names) == sorted(columns) and len(set(names)) == len(names):
        pos = {c: j for j, c in enumerate(names)}
        return M[:, [pos[c] for c in columns]]
    j = next(j for j, (a, b) in enumerate(zip(names, columns)) if a != b)
    raise ValueError(f"{where}: column {j} is {names[j]!r}, the dataset expects {columns[j]!r}")
