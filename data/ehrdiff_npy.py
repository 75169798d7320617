"""The EHRDiff authors' processed MIMIC-III matrices (X_num_train.npy / X_num_test.npy, optional code JSONs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import EHRData, register_dataset, split_indices
from .cache import find_file, sha256_file
from .matrix import infer_kinds

HOW_TO_GET = ("get the EHRDiff authors' processed MIMIC-III files (X_num_train.npy, X_num_test.npy and optionally "
              "diag_icd_data_by_patients.json, proc_icd_data_by_patients.json) from the Google Drive folder linked in "
              "the README of https://github.com/sczzz3/EHRDiff (needs MIMIC-III credentials) and set data.path to it")
CODE_JSONS = ("diag_icd_data_by_patients.json", "proc_icd_data_by_patients.json")


def _load(path: Path) -> np.ndarray:
    try:
        X = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a plain numeric .npy array ({e})") from None
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{path}: expected a 2-D patients x codes array, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) and X.dtype != bool:
        raise ValueError(f"{path}: expected a numeric array, got dtype {X.dtype}")
    X = X.astype(np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{path}: non-finite value in row {i}, column {j}; expected finite numbers")
    return X


def _vocabulary(path: Path) -> list[str] | None:
    """Sorted codes of an authors' code JSON when it maps patients to code lists (its layout is undocumented)."""
    obj = json.loads(path.read_text())
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if values is None:
        return None
    codes: set[str] = set()
    for v in values:  # one entry per patient: a list (or list of per-visit lists) of codes
        if not isinstance(v, list):
            return None
        for c in v:
            codes.update(map(str, c) if isinstance(c, list) else [str(c)])
    return sorted(codes)


def column_names(folder: Path, width: int, columns_file: str | None, meta: dict) -> list[str]:
    """Names from columns_file (JSON list or one name per line); else from the code JSONs when their vocabularies
    add up to the width (order assumed: sorted diagnoses then sorted procedures, flagged as inferred); else F0000..."""
    if columns_file is not None:
        p = Path(columns_file)
        if not p.is_file():
            raise FileNotFoundError(f"ehrdiff_npy: columns_file {p} does not exist")
        text = p.read_text()
        names = json.loads(text) if p.suffix == ".json" else [line.strip() for line in text.splitlines() if line.strip()]
        if not isinstance(names, list) or len(names) != width:
            raise ValueError(f"{p}: expected a list of {width} column names, got "
                             f"{len(names) if isinstance(names, list) else type(names).__name__}")
        meta["column_names"] = f"from {p.name}"
        meta["sha256"][p.name] = sha256_file(p)
        return [str(n) for n in names]
    found = [folder / n for n in CODE_JSONS if (folder / n).is_file()]
    if len(found) == 2:
        for p in found:
            meta["sha256"][p.name] = sha256_file(p)
        diag, proc = (_vocabulary(p) for p in found)
        if diag is not None and proc is not None and len(diag) + len(proc) == width:
            meta["column_names"] = ("inferred from the code JSONs as sorted diagnosis then sorted procedure codes; "
                                    "the authors do not document the order, so treat names as unverified")
            return [f"D_{c}" for c in diag] + [f"P_{c}" for c in proc]
        meta["column_names"] = (f"generic: the code JSONs give {len(diag) if diag else '?'} + "
                                f"{len(proc) if proc else '?'} codes for {width} columns")
    else:
        meta["column_names"] = "generic (no columns_file and no code JSONs)"
    return [f"F{j:04d}" for j in range(width)]


@register_dataset("ehrdiff_npy")
def load_ehrdiff_npy(path: str, keep_authors_split: bool = True, columns_file: str | None = None,
                     kind: str = "auto", split: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0) -> EHRData:
    """X_num_train.npy stays the train split; X_num_test.npy is cut into holdout and test in the ratio
    split[1] : split[2] (seeded by split_seed; 1:1 by default). keep_authors_split=false pools both files and applies
    `split` instead. kind: "auto" (binary when every value is 0/1, else an error), "binary" or "continuous".
    Column names: see `column_names`.
    """
    if kind not in ("auto", "binary", "continuous"):
        raise ValueError(f"ehrdiff_npy: unknown kind {kind!r}; valid choices: auto, binary, continuous")
    folder = Path(path)
    f_train = find_file(folder, ["X_num_train.npy"], "ehrdiff_npy", HOW_TO_GET)
    f_test = find_file(folder, ["X_num_test.npy"], "ehrdiff_npy", HOW_TO_GET)
    A, B = _load(f_train), _load(f_test)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"{f_test}: {B.shape[1]} columns, but {f_train.name} has {A.shape[1]}; the files must match")
    meta: dict = {"source": "EHRDiff authors' processed MIMIC-III (github.com/sczzz3/EHRDiff)",
                  "licence": "derived from MIMIC-III: PhysioNet Credentialed Health Data License 1.5.0",
                  "sha256": {f_train.name: sha256_file(f_train), f_test.name: sha256_file(f_test)}}
    columns = column_names(folder, A.shape[1], columns_file, meta)
    if kind == "continuous":
        kinds = ["continuous"] * len(columns)
    else:
        both = np.concatenate([A, B])
        inferred = infer_kinds(both)
        if "continuous" in inferred:
            j = inferred.index("continuous")
            src, X = (f_train, A) if ((A[:, j] != 0) & (A[:, j] != 1)).any() else (f_test, B)
            i = int(((X[:, j] != 0) & (X[:, j] != 1)).nonzero()[0][0])
            raise ValueError(f"{src}: non-binary value {X[i, j]:g} in row {i}, column {columns[j]}; the EHRDiff MIMIC "
                             "matrices are binary (set data.kind=continuous for a continuous matrix)")
        kinds = ["binary"] * len(columns)
    split = tuple(float(f) for f in split)
    if keep_authors_split:
        if split[1] + split[2] <= 0:
            raise ValueError(f"ehrdiff_npy: split {list(split)} leaves no holdout or test share for X_num_test.npy")
        n_ho = int(round(len(B) * split[1] / (split[1] + split[2])))
        perm = np.random.default_rng(split_seed).permutation(len(B))
        train, holdout, test = A, B[perm[:n_ho]], B[perm[n_ho:]]
        rule = "train = X_num_train.npy; X_num_test.npy cut into holdout:test = split[1]:split[2]"
    else:
        X = np.concatenate([A, B])
        tr, ho, te = split_indices(len(X), split, split_seed)
        train, holdout, test = X[tr], X[ho], X[te]
        rule = "both files pooled and split by `split`"
    meta["split"] = {"fractions": list(split), "seed": split_seed, "rule": rule,
                     "n_train": len(train), "n_holdout": len(holdout), "n_test": len(test)}
    meta["counts"] = {"rows_train_file": int(len(A)), "rows_test_file": int(len(B)), "columns": int(A.shape[1]),
                      "codes_per_patient_mean": float(A.sum(axis=1).mean()),
                      "constant_columns_train": int((A.max(axis=0) == A.min(axis=0)).sum())}
    return EHRData(train, holdout, test, tuple(columns), tuple(kinds), (), "ehrdiff_npy", meta)
