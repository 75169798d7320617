"""Any user patient x feature matrix (CSV, Parquet, NPZ) plus the matrix helpers the other loaders share."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .base import KINDS, EHRData, from_matrix, register_dataset, split_indices
from .cache import csv_header, read_csv_strict, sha256_file

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".npz")
MOSTLY_BINARY = 0.9  # a continuous-inferred column with at least this share of 0/1 cells is reported (meta + log)
log = logging.getLogger(__name__)


def pairs_to_binary(patients: np.ndarray, codes: np.ndarray, n_patients: int, n_codes: int) -> np.ndarray:
    """Binary float32 matrix with a 1 at every (patient index, code index) pair (duplicates allowed)."""
    X = np.zeros((n_patients, n_codes), dtype=np.float32)
    X[patients, codes] = 1.0
    return X


def infer_kinds(X: np.ndarray) -> list[str]:
    """'binary' for columns whose values are all 0 or 1, else 'continuous'."""
    return ["binary" if b else "continuous" for b in ((X == 0) | (X == 1)).all(axis=0)]


def minmax_fit(X: np.ndarray, columns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (min, max) over the rows of X for the given column positions (a constant column gets max = min)."""
    cols = list(columns)
    return X[:, cols].min(axis=0), X[:, cols].max(axis=0)


def minmax_apply(X: np.ndarray, columns: Sequence[int], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, int]:
    """Scale the given columns to [0, 1] with (x - lo) / (hi - lo) (range 0 -> divide by 1), clip; return (X, n_clipped)."""
    X = X.copy()
    cols = list(columns)
    span = np.where(hi > lo, hi - lo, 1.0)
    Z = (X[:, cols] - lo) / span
    n_clipped = int(((Z < 0) | (Z > 1)).sum())
    X[:, cols] = np.clip(Z, 0.0, 1.0)
    return X, n_clipped


def minmax_inverse(Z: np.ndarray, scaling: Mapping[str, Sequence[float]], columns: Sequence[str]) -> np.ndarray:
    """Map a scaled matrix (e.g. synthetic samples) back to original units with meta['scaling'] {column: [min, max]}."""
    X = np.asarray(Z, dtype=np.float64).copy()
    for j, c in enumerate(columns):  # one vectorised column operation per scaled feature (~100 columns)
        if c in scaling:
            lo, hi = scaling[c]
            X[:, j] = X[:, j] * (hi - lo if hi > lo else 1.0) + lo
    return X


def split_and_scale(X: np.ndarray, columns: Sequence[str], kinds: Sequence[str], *, name: str,
                    label_columns: Sequence[str], meta: dict, split: Sequence[float], split_seed: int) -> EHRData:
    """Split by patient; impute NaN cells with train statistics; min-max the continuous columns on train; keep both in meta.

    Missing-value rule: a NaN in a continuous column takes the column's train-split median, a NaN in a binary column
    the train-split mode (ties -> 0). Scaling: (x - min) / (max - min) with min/max of the (imputed) train rows,
    holdout/test values outside the train range clipped to [0, 1] and counted.
    """
    split = tuple(float(f) for f in split)
    tr, ho, te = split_indices(len(X), split, split_seed)
    cont = [j for j, k in enumerate(kinds) if k == "continuous"]
    binary = np.asarray([k == "binary" for k in kinds])
    meta = dict(meta)
    counts = meta.setdefault("counts", {})
    miss = np.isnan(X)
    if miss.any():
        with np.errstate(all="ignore"):
            med = np.nanmedian(X[tr], axis=0) if len(tr) else np.full(X.shape[1], np.nan)
            mode = (np.nanmean(X[tr], axis=0) > 0.5).astype(np.float64)
        fill = np.where(binary, mode, med)
        cols_missing = miss.any(axis=0)
        unfillable = cols_missing & np.isnan(fill)
        if unfillable.any():
            j = int(unfillable.nonzero()[0][0])
            raise ValueError(f"{name}: column {columns[j]!r} has no observed value in the train split, so its "
                             "missing cells cannot be imputed")
        X = np.where(miss, fill[None, :], X)
        meta["imputation"] = {columns[j]: float(fill[j]) for j in np.flatnonzero(cols_missing)}
        meta["imputation_rule"] = "NaN -> train-split median (continuous) or mode (binary), in original units"
        counts["cells_imputed"] = {columns[j]: int(miss[:, j].sum()) for j in np.flatnonzero(cols_missing)}
    lo, hi = minmax_fit(X[tr], cont)
    parts, clipped = [], 0
    for idx in (tr, ho, te):
        Z, n = minmax_apply(X[idx], cont, lo, hi)
        parts.append(Z)
        clipped += n
    meta["scaling"] = {columns[j]: [float(a), float(b)] for j, a, b in zip(cont, lo, hi)}
    meta["scaling_rule"] = ("min-max to [0, 1] fitted on the train split; x = z * (max - min) + min maps back "
                            "(data.matrix.minmax_inverse); holdout/test values outside the train range are clipped")
    counts["cells_clipped_to_train_range"] = clipped
    meta["split"] = {"fractions": list(split), "seed": split_seed,
                     "n_train": len(tr), "n_holdout": len(ho), "n_test": len(te)}
    return EHRData(*parts, tuple(columns), tuple(kinds), tuple(label_columns), name, meta)


def _read(path: Path) -> tuple[pd.DataFrame, dict]:
    """Read a CSV/Parquet/NPZ matrix into a DataFrame of float64 columns (+ kinds/labels stored in an NPZ)."""
    extra: dict = {}
    name = path.name.lower()
    if name.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{path}: unreadable NPZ ({e}); store X as a number array and names as a string array "
                             "(np.array(names, dtype=str))") from None
        if "X" not in arrays:
            raise ValueError(f"{path}: an NPZ matrix needs an array 'X' (and optionally 'columns', 'kinds', "
                             f"'label_columns'); found {', '.join(arrays)}")
        X = arrays["X"]
        if X.ndim != 2:
            raise ValueError(f"{path}: array 'X' must be 2-D (patients x features), got shape {X.shape}")
        cols = [str(c) for c in arrays["columns"]] if "columns" in arrays else [f"F{j:04d}" for j in range(X.shape[1])]
        if len(cols) != X.shape[1]:
            raise ValueError(f"{path}: 'columns' has {len(cols)} names but X has {X.shape[1]} columns")
        for key in ("kinds", "label_columns"):
            if key in arrays:
                extra[key] = [str(v) for v in arrays[key]]
        if len(set(cols)) != len(cols):
            dup = next(c for i, c in enumerate(cols) if c in cols[:i])
            raise ValueError(f"{path}: column {dup!r} appears twice; column names must be unique")
        return pd.DataFrame(X, columns=cols), extra
    if name.endswith((".parquet", ".pq")):
        df = pd.read_parquet(path)
        df.columns = [str(c) for c in df.columns]
        if len(set(df.columns)) != len(df.columns):
            raise ValueError(f"{path}: column names must be unique")
        return df, extra
    header = csv_header(path)
    return read_csv_strict(path, list(header), dtype=str, case_insensitive=False,
                           na_values=("", "NA", "NaN", "nan", "null")), extra


def _to_numeric(df: pd.DataFrame, path: Path) -> np.ndarray:
    """Float64 matrix; one sentence naming the first non-numeric or missing cell."""
    out = np.empty(df.shape, dtype=np.float64)
    for j, c in enumerate(df.columns):  # one vectorised conversion per column
        col = df[c]
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(num) if col.dtype.kind == "f" else col.isna().to_numpy()
        bad = np.isnan(num) & ~missing
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise ValueError(f"{path}: non-numeric value {col.iloc[i]!r} in row {i}, column {c!r}; expected numbers")
        if missing.any() or not np.isfinite(num).all():
            i = int((~np.isfinite(num)).nonzero()[0][0])
            raise ValueError(f"{path}: missing or non-finite value in row {i}, column {c!r}; the matrix must be "
                             "complete (impute it first)")
        out[:, j] = num
    return out


def _mostly_binary(X: np.ndarray, columns: Sequence[str], kinds: Sequence[str], inferred: Sequence[str],
                   given: object) -> dict[str, dict]:
    """Columns inferred continuous although at least MOSTLY_BINARY of their cells are 0/1 (likely a stray value):
    {column: first non-binary value, its row and the count of such cells}; empty when kinds were given."""
    out: dict[str, dict] = {}
    for j, (k, i) in enumerate(zip(kinds, inferred)):
        if i != "continuous" or k != "continuous" or (given is not None and not isinstance(given, Mapping)):
            continue
        if isinstance(given, Mapping) and columns[j] in given:
            continue
        bad = (X[:, j] != 0) & (X[:, j] != 1)
        if bad.mean() <= 1 - MOSTLY_BINARY:
            r = int(bad.nonzero()[0][0])
            out[columns[j]] = {"value": float(X[r, j]), "row": r, "non_binary_cells": int(bad.sum())}
    return out


@register_dataset("matrix")
def load_matrix(path: str | None = None, label_columns: Sequence[str] = (), kinds: str | Mapping[str, str] | None = None,
                id_column: str | None = None, drop_columns: Sequence[str] = (), drop_constant: bool = False,
                scale: bool = False, split: Sequence[float] = (0.8, 0.1, 0.1),
                split_seed: int = 0) -> EHRData:
    """A user patient x feature matrix (CSV[.gz] / Parquet / NPZ with X, columns[, kinds, label_columns]).

    kinds: None (infer: a column holding only 0/1 is binary, else continuous), "binary", "continuous", or a
    mapping {column: kind} (unlisted columns inferred). id_column: a patient id column (must be unique; dropped).
    drop_constant: drop constant columns (counted in meta) instead of refusing them. scale: min-max the continuous
    columns to [0, 1] on the train split (the EHRDiff continuous setting), kept in meta['scaling'].
    """
    if path is None:
        raise ValueError(f"matrix: no file given; set data.path=<patients x features {'/'.join(SUFFIXES)} file>")
    path_ = Path(path)
    if not path_.is_file():
        raise FileNotFoundError(f"matrix: file {path_} does not exist; give data.path=<patients x features "
                                f"{'/'.join(SUFFIXES)} file>")
    if not path_.name.lower().endswith(SUFFIXES):
        raise ValueError(f"{path_}: unknown matrix format; valid suffixes: {', '.join(SUFFIXES)}")
    df, extra = _read(path_)
    labels = list(label_columns) or extra.get("label_columns", [])
    if id_column is not None:
        if id_column not in df.columns:
            raise ValueError(f"{path_}: id column {id_column!r} not found; columns start {', '.join(df.columns[:8])}")
        ids = df[id_column]
        dup = ids.duplicated().to_numpy()
        if dup.any():
            i = int(dup.nonzero()[0][0])
            raise ValueError(f"{path_}: duplicated patient {ids.iloc[i]!r} in column {id_column!r} (row {i}); "
                             "expected one row per patient")
        df = df.drop(columns=[id_column])
    unknown = [c for c in [*drop_columns, *labels] if c not in df.columns]
    if unknown:
        raise ValueError(f"{path_}: column {unknown[0]!r} (label or drop column) not found; columns start "
                         f"{', '.join(df.columns[:8])}")
    df = df.drop(columns=list(drop_columns))
    if df.shape[0] < 3 or df.shape[1] == 0:
        raise ValueError(f"{path_}: expected at least 3 patient rows and 1 feature column, got {df.shape}")
    X = _to_numeric(df, path_)
    columns = list(df.columns)

    const = (X.max(axis=0) == X.min(axis=0))
    dropped_constant: list[str] = []
    if const.any():
        if not drop_constant:
            j = int(const.nonzero()[0][0])
            raise ValueError(f"{path_}: column {columns[j]!r} is constant ({X[0, j]:g} in every row); expected "
                             f"varying features (set data.drop_constant=true to drop {int(const.sum())} such column(s))")
        keep = ~const
        dropped_constant = [c for c, k in zip(columns, const) if k]
        if any(c in labels for c in dropped_constant):
            raise ValueError(f"{path_}: label column {next(c for c in dropped_constant if c in labels)!r} is constant")
        X, columns = X[:, keep], [c for c, k in zip(columns, keep) if k]

    inferred = infer_kinds(X)
    given = kinds if kinds is not None else extra.get("kinds")
    if given is None:
        kind_list = inferred
    elif isinstance(given, str):
        kind_list = [given] * len(columns)
    elif isinstance(given, Mapping):
        stray = [c for c in given if c not in columns]
        if stray:
            raise ValueError(f"{path_}: kinds names column {stray[0]!r}, which is not in the matrix")
        kind_list = [given.get(c, k) for c, k in zip(columns, inferred)]
    else:
        kind_list = list(given)
        if len(kind_list) != len(columns):
            raise ValueError(f"{path_}: {len(kind_list)} kinds for {len(columns)} columns")
    bad_kind = [k for k in kind_list if k not in KINDS]
    if bad_kind:
        raise ValueError(f"{path_}: unknown column kind {bad_kind[0]!r}; valid choices: {', '.join(KINDS)}")
    nonbin = [j for j, (k, i) in enumerate(zip(kind_list, inferred)) if k == "binary" and i != "binary"]
    if nonbin:
        j = nonbin[0]
        i = int(((X[:, j] != 0) & (X[:, j] != 1)).nonzero()[0][0])
        raise ValueError(f"{path_}: non-binary value {X[i, j]:g} in binary column {columns[j]!r} (row {i}); "
                         "binary columns hold only 0 or 1")

    suspect = _mostly_binary(X, columns, kind_list, inferred, given)
    meta = {"source": f"user matrix {path_.name}", "licence": "as given by the user",
            "sha256": {path_.name: sha256_file(path_)},
            "preprocessing": {"kinds": "given" if given is not None else "inferred (only 0/1 -> binary)",
                              "scale": "minmax" if scale else "none", "id_column": id_column,
                              "drop_columns": list(drop_columns)},
            "counts": {"patients": int(len(X)), "columns": len(columns), "constant_columns_dropped": len(dropped_constant)},
            "dropped_columns": dropped_constant}
    if suspect:
        meta["mostly_binary_continuous"] = suspect
        meta["counts"]["mostly_binary_continuous_columns"] = len(suspect)
        c, d = next(iter(suspect.items()))
        log.warning("%s: %d column(s) hold mostly 0/1 but are continuous because of other values, e.g. %r: "
                    "value %g in row %d (%d such cells); set data.kinds={%s: binary} to refuse them instead",
                    path_, len(suspect), c, d["value"], d["row"], d["non_binary_cells"], c)
    if scale:
        return split_and_scale(X, columns, kind_list, name="matrix", label_columns=labels, meta=meta, split=split,
                               split_seed=split_seed)
    return from_matrix(X.astype(np.float32), columns, kind_list, name="matrix", label_columns=labels, meta=meta,
                       split=tuple(float(f) for f in split), split_seed=split_seed)
