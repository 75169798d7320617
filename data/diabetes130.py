"""UCI Diabetes 130-US hospitals 1999-2008: per patient, binary 3-character ICD-9 diagnoses + 30-day readmission."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .base import EHRData, from_matrix, register_dataset
from .cache import cache_root, extract_member, fetch, read_csv_strict, sha256_file
from .icd9 import bad_code_message, truncate_icd9
from .matrix import pairs_to_binary

URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
CSV = "diabetic_data.csv"
# sha256 of the official diabetic_data.csv (measured on the UCI file; it matches the archive's member).
CSV_SHA256 = "0689e7ec031237dc63031b938805c48377748761a3b26acab621567afa24df97"
DIAG = ("diag_1", "diag_2", "diag_3")
READMIT = {"NO", ">30", "<30"}
AGE_BANDS = [f"[{a}-{a + 10})" for a in range(0, 100, 10)]
RACES = ["AfricanAmerican", "Asian", "Caucasian", "Hispanic", "Other"]
HOW_TO_GET = (f"download {URL} (UCI dataset 296, CC BY 4.0) and unzip {CSV} there, or set data.download=true to "
              "fetch it into the cache folder ($EHRBENCH_CACHE or ~/.cache/ehrbench)")


def locate(path: str | None, download: bool, url: str = URL, sha256: str = CSV_SHA256) -> Path:
    """The CSV at `path` (a file or a folder holding it), else the verified cached copy (downloaded once if allowed)."""
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if (p / CSV).is_file():
            return p / CSV
        if not download:
            raise FileNotFoundError(f"diabetes130: {CSV} not found at {p}; {HOW_TO_GET}")
    elif not download:
        raise FileNotFoundError(f"diabetes130: no data.path given and data.download=false; {HOW_TO_GET}")
    folder = cache_root() / "diabetes130"
    cached = folder / CSV
    if cached.is_file() and sha256_file(cached) == sha256:
        return cached
    archive = fetch(url, folder / "diabetes130.zip")
    try:
        return extract_member(archive, CSV, cached, sha256)
    except ValueError:
        archive.unlink()  # a corrupted or changed archive is not trusted: fetched again next time
        raise


def _demographics(first: pd.DataFrame, counts: dict) -> tuple[np.ndarray, list[str]]:
    """One-hot SEX_F, AGE_<band>, RACE_<race> from each patient's first encounter (unknown values -> all zeros)."""
    sex = (first["gender"] == "Female").to_numpy()
    counts["gender_unknown_patients"] = int((~first["gender"].isin(["Female", "Male"])).sum())
    age = pd.Categorical(first["age"].where(first["age"].isin(AGE_BANDS)), categories=AGE_BANDS).codes
    race = pd.Categorical(first["race"].where(first["race"].isin(RACES)), categories=RACES).codes
    counts["age_unknown_patients"] = int((age < 0).sum())
    counts["race_unknown_patients"] = int((race < 0).sum())
    n = len(first)
    A = np.zeros((n, len(AGE_BANDS)), np.float32)
    A[np.flatnonzero(age >= 0), age[age >= 0]] = 1
    R = np.zeros((n, len(RACES)), np.float32)
    R[np.flatnonzero(race >= 0), race[race >= 0]] = 1
    names = ["SEX_F"] + [f"AGE_{b[1:-1].replace('-', '_')}" for b in AGE_BANDS] + [f"RACE_{r.upper()}" for r in RACES]
    return np.concatenate([sex[:, None].astype(np.float32), A, R], axis=1), names


@register_dataset("diabetes130")
def load_diabetes130(path: str | None = None, download: bool = False, demographics: bool = False,
                     min_count: int = 1, url: str = URL, sha256: str = CSV_SHA256,
                     split: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0) -> EHRData:
    """diabetic_data.csv -> one row per patient_nbr over all encounters: D_<ICD-9 category> columns + READMIT_30.

    diag_1..3 are truncated like MIMIC (E-codes 4 characters, others 3) after restoring the leading zeros the
    export dropped (8 -> 008, 250.83 -> 250); "?" is missing. READMIT_30 = 1 if any encounter has readmitted "<30"
    (the label). demographics=true adds SEX_F, AGE_<band>, RACE_<race> one-hot columns taken from the patient's first
    encounter (lowest encounter_id); otherwise only their counts go to meta. min_count: keep codes held by at
    least that many patients. Rows are ordered by patient_nbr.
    """
    if int(min_count) < 1:
        raise ValueError(f"diabetes130: min_count must be >= 1, got {min_count}")
    csv = locate(path, download, url, sha256)
    df = read_csv_strict(csv, ["encounter_id", "patient_nbr", *DIAG, "readmitted"], ["race", "gender", "age"],
                         case_insensitive=False)
    for col in ("encounter_id", "patient_nbr", "readmitted", *DIAG):
        empty = df[col].isna().to_numpy()
        if empty.any():
            i = int(empty.nonzero()[0][0])
            raise ValueError(f"{csv}: empty value in column {col} at line {i + 2} (a short or malformed row); "
                             f"expected a value ('?' marks a missing diagnosis)")
    for col in ("encounter_id", "patient_nbr"):
        bad = ~df[col].str.fullmatch(r"\d+").fillna(False).to_numpy()
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise ValueError(f"{csv}: {col} {df[col].iloc[i]!r} at line {i + 2} is not an integer id")
    enc = df["encounter_id"].astype(np.int64)
    dup = enc.duplicated().to_numpy()
    if dup.any():
        i = int(dup.nonzero()[0][0])
        raise ValueError(f"{csv}: duplicated encounter_id {enc.iloc[i]} at line {i + 2}; expected one row per encounter")
    bad = ~df["readmitted"].isin(READMIT).to_numpy()
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise ValueError(f"{csv}: readmitted {df['readmitted'].iloc[i]!r} at line {i + 2}; expected one of NO, >30, <30")

    pid = df["patient_nbr"].astype(np.int64).to_numpy()
    patients, row_of = np.unique(pid, return_inverse=True)
    counts: dict = {"encounters": int(len(df)), "patients": int(len(patients))}
    long = df[list(DIAG)].melt(ignore_index=False, var_name="field", value_name="code")
    missing = long["code"] == "?"
    counts["diagnosis_cells"] = int(len(long))
    counts["diagnosis_cells_missing"] = int(missing.sum())
    long = long[~missing]
    cut = truncate_icd9(long["code"], "diagnosis", zero_pad=True)
    for field in DIAG:  # name the column of the first malformed code
        sel = (long["field"] == field).to_numpy()
        msg = bad_code_message(f"{csv} column {field}", long["code"][sel], cut[sel], "diagnosis")
        if msg is not None:
            raise ValueError(msg)
    pairs = pd.DataFrame({"row": row_of[long.index.to_numpy()], "column": "D_" + cut.to_numpy()}).drop_duplicates()
    per_code = pairs["column"].value_counts()
    keep = per_code[per_code >= int(min_count)].index
    counts["codes_before_min_count"] = int(len(per_code))
    counts["codes_dropped_min_count"] = int(len(per_code) - len(keep))
    pairs = pairs[pairs["column"].isin(keep)]
    columns = sorted(keep)
    X = pairs_to_binary(pairs["row"].to_numpy(), pd.Index(columns).get_indexer(pairs["column"]), len(patients),
                        len(columns))
    counts["patients_without_codes"] = int((X.sum(axis=1) == 0).sum())
    counts["codes_per_patient_mean"] = float(X.sum(axis=1).mean())

    readmit = np.zeros(len(patients), np.float32)
    np.maximum.at(readmit, row_of, (df["readmitted"] == "<30").to_numpy(np.float32))
    counts["readmit_30_rate"] = float(readmit.mean())
    order = np.lexsort((enc.to_numpy(), row_of))
    first_rows = order[np.r_[True, np.diff(row_of[order]) != 0]]
    parts, extra_cols = [X], []
    have_demo = all(c in df.columns for c in ("race", "gender", "age"))
    if have_demo:
        D, names = _demographics(df.iloc[first_rows].reset_index(drop=True), counts)
        counts["demographics_first_encounter"] = {n: int(v) for n, v in zip(names, D.sum(axis=0))}
        if demographics:
            parts.append(D)
            extra_cols = names
    elif demographics:
        raise ValueError(f"{csv}: demographics=true needs the columns race, gender and age")
    X = np.concatenate([*parts, readmit[:, None]], axis=1)
    columns = [*columns, *extra_cols, "READMIT_30"]
    meta = {"source": "UCI Diabetes 130-US hospitals for years 1999-2008 (dataset 296), " + URL,
            "licence": "CC BY 4.0; cite Strack et al. 2014, BioMed Research International 781670",
            "sha256": {csv.name: (got := sha256_file(csv))}, "matches_official_sha256": got == CSV_SHA256,
            "preprocessing": {"truncation": "ICD-9 E-codes first 4 characters, others first 3, after zero-padding "
                                            "the category (8 -> 008)", "missing": "'?' diagnosis cells skipped",
                              "label": "READMIT_30 = any encounter with readmitted '<30'",
                              "demographics": "columns from the first encounter" if demographics else "counts in meta",
                              "min_count": int(min_count)},
            "counts": counts}
    return from_matrix(X, columns, ["binary"] * len(columns), name="diabetes130", label_columns=["READMIT_30"],
                       meta=meta, split=tuple(float(f) for f in split), split_seed=split_seed)
