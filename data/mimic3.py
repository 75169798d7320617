"""MIMIC-III (and MIMIC-IV) diagnosis / procedure tables -> one binary row of truncated ICD codes per patient."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .base import EHRData, from_matrix, register_dataset
from .cache import csv_header, find_file, read_csv_strict, sha256_file
from .icd9 import bad_code_message, truncate_icd9, truncate_icd10
from .matrix import pairs_to_binary

HOW_TO_GET = ("MIMIC-III is credentialed: complete the PhysioNet training, sign the data use agreement at "
              "https://physionet.org/content/mimiciii/1.4/ (MIMIC-IV: https://physionet.org/content/mimiciv/), "
              "download DIAGNOSES_ICD.csv.gz (and PROCEDURES_ICD.csv.gz) and set data.path to that folder")
PREFIX = {("diagnosis", 9): "D_", ("procedure", 9): "P_", ("diagnosis", 10): "D10_", ("procedure", 10): "P10_"}
ICD10_CHOICES = ("drop", "category")


def table_names(stem: str) -> list[str]:
    """File names tried for a MIMIC table: upper- and lower-case, .csv and .csv.gz, also under hosp/ (MIMIC-IV)."""
    names = [f"{s}{ext}" for s in (stem.upper(), stem.lower()) for ext in (".csv", ".csv.gz")]
    return names + [f"hosp/{n}" for n in names]


def read_codes(path: Path, kind: str, icd10: str, on_bad_code: str, counts: dict) -> pd.DataFrame:
    """(subject_id: int64, column: str) pairs from one DIAGNOSES_ICD / PROCEDURES_ICD table (III or IV layout)."""
    header = {str(c).strip().lower() for c in csv_header(path, ["subject_id", "icd9_code or icd_code"])}
    if "icd9_code" in header:  # MIMIC-III: every code is ICD-9
        df = read_csv_strict(path, ["subject_id", "icd9_code"])
        df["icd_version"] = "9"
        code_col = "icd9_code"
    else:  # MIMIC-IV: icd_code + icd_version (9 or 10)
        df = read_csv_strict(path, ["subject_id", "icd_code", "icd_version"])
        code_col = "icd_code"
    where = f"{path} column {code_col}"
    sid = df["subject_id"].str.strip()
    bad_sid = ~sid.str.fullmatch(r"\d+").fillna(False)
    if bad_sid.any():
        i = int(bad_sid.to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: subject_id {df['subject_id'].iloc[i]!r} at line {i + 2} is not a patient number; "
                         "expected a non-negative integer")
    version = df["icd_version"].str.strip()
    bad_ver = ~version.isin(["9", "10"])
    if bad_ver.any():
        i = int(bad_ver.to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: icd_version {df['icd_version'].iloc[i]!r} at line {i + 2}; expected 9 or 10")
    codes = df[code_col]
    missing = codes.isna() | (codes.str.strip() == "")
    counts[f"{kind}_rows"] = int(len(df))
    counts[f"{kind}_rows_missing_code"] = int(missing.sum())
    is10 = (version == "10").to_numpy()
    counts[f"{kind}_rows_icd10"] = int(is10.sum())
    codes = codes.mask(missing)
    out = pd.Series(pd.NA, index=df.index, dtype="string")
    for ver, rows in ((9, ~is10), (10, is10)):
        if not rows.any() or (ver == 10 and icd10 == "drop"):
            continue
        sub = codes[rows]
        cut = truncate_icd9(sub, kind) if ver == 9 else truncate_icd10(sub, kind)
        msg = bad_code_message(where, sub, cut, kind, ver)
        if msg is not None and on_bad_code == "error":
            raise ValueError(msg + "; set data.on_bad_code=drop to drop and count such rows")
        counts[f"{kind}_rows_bad_code_icd{ver}"] = int((sub.notna() & cut.isna()).sum())
        out[rows] = PREFIX[(kind, ver)] + cut
    counts[f"{kind}_rows_used"] = int(out.notna().sum())
    return pd.DataFrame({"subject_id": sid.astype(np.int64), "column": out})


def read_mortality(folder: Path, subjects: np.ndarray, counts: dict) -> tuple[np.ndarray, Path]:
    """Per patient, 1 if any admission has HOSPITAL_EXPIRE_FLAG = 1 (ADMISSIONS table), aligned to `subjects`."""
    path = find_file(folder, table_names("ADMISSIONS"), "mimic3 mortality label",
                     "the ADMISSIONS table is needed for mortality_label=true; " + HOW_TO_GET)
    adm = read_csv_strict(path, ["subject_id", "hospital_expire_flag"])
    flag = adm["hospital_expire_flag"].str.strip()
    if not flag.isin(["0", "1"]).all():
        i = int((~flag.isin(["0", "1"])).to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: hospital_expire_flag {adm['hospital_expire_flag'].iloc[i]!r} at line {i + 2}; "
                         "expected 0 or 1")
    died = (flag == "1").groupby(adm["subject_id"].str.strip().astype(np.int64)).max()
    counts["patients_without_admission_row"] = int((~pd.Index(subjects).isin(died.index)).sum())
    return died.reindex(subjects, fill_value=False).to_numpy(dtype=np.float32), path


@register_dataset("mimic3")
def load_mimic3(path: str, procedures: bool = True, min_count: int = 1, icd10: str = "drop",
                mortality_label: bool = False, on_bad_code: str = "error",
                split: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0) -> EHRData:
    """MIMIC-III DIAGNOSES_ICD (+ PROCEDURES_ICD) -> one binary row per SUBJECT_ID over all admissions.

    Codes are truncated as the EHRDiff README prescribes (ICD-9 E-codes keep 4 characters, others 3; procedures their
    first 3 characters) and prefixed D_ / P_; columns sorted. procedures=false gives medGAN's diagnosis-only setting
    (1,071 columns on MIMIC-III), true the EHRDiff setting (1,782 expected). min_count: keep codes held by at least
    that many patients. MIMIC-IV (lower-case headers, icd_code + icd_version): ICD-9 rows are used; icd10="drop"
    drops ICD-10 rows (counted), icd10="category" keeps their 3-character category as D10_ / P10_ columns.
    Every patient of the tables is a row (one without any usable code is an all-zero row, counted).
    """
    if icd10 not in ICD10_CHOICES:
        raise ValueError(f"mimic3: unknown icd10 option {icd10!r}; valid choices: {', '.join(ICD10_CHOICES)}")
    if on_bad_code not in ("error", "drop"):
        raise ValueError(f"mimic3: unknown on_bad_code {on_bad_code!r}; valid choices: error, drop")
    if int(min_count) < 1:
        raise ValueError(f"mimic3: min_count must be >= 1, got {min_count}")
    folder = Path(path)
    files = {"diagnosis": find_file(folder, table_names("DIAGNOSES_ICD"), "mimic3 diagnoses", HOW_TO_GET)}
    if procedures:
        files["procedure"] = find_file(folder, table_names("PROCEDURES_ICD"), "mimic3 procedures",
                                       HOW_TO_GET + " (or set data.procedures=false for diagnoses only)")
    counts: dict = {}
    pairs = pd.concat([read_codes(p, kind, icd10, on_bad_code, counts) for kind, p in files.items()],
                      ignore_index=True)
    subjects = np.sort(pairs["subject_id"].unique())
    used = pairs.dropna(subset=["column"]).drop_duplicates()
    per_code = used["column"].value_counts()
    keep = per_code[per_code >= int(min_count)].index
    counts["codes_before_min_count"] = int(len(per_code))
    counts["codes_dropped_min_count"] = int(len(per_code) - len(keep))
    used = used[used["column"].isin(keep)]
    columns = sorted(keep)
    col_idx = pd.Index(columns).get_indexer(used["column"])
    row_idx = np.searchsorted(subjects, used["subject_id"].to_numpy())
    X = pairs_to_binary(row_idx, col_idx, len(subjects), len(columns))
    counts["patients"] = int(len(subjects))
    counts["patients_without_codes"] = int((X.sum(axis=1) == 0).sum())
    counts["codes_per_patient_mean"] = float(X.sum(axis=1).mean())
    counts["columns"] = {p: int(sum(c.startswith(p) for c in columns)) for p in sorted(set(PREFIX.values()))}

    sha = {str(p.relative_to(folder)): sha256_file(p) for p in files.values()}
    kinds = ["binary"] * len(columns)
    labels: list[str] = []
    if mortality_label:
        y, adm_path = read_mortality(folder, subjects, counts)
        X = np.concatenate([X, y[:, None]], axis=1)
        columns, kinds, labels = [*columns, "MORTALITY"], [*kinds, "binary"], ["MORTALITY"]
        sha[str(adm_path.relative_to(folder))] = sha256_file(adm_path)
        counts["mortality_rate"] = float(y.mean())
    meta = {"source": "MIMIC-III / MIMIC-IV (PhysioNet, credentialed)",
            "licence": "PhysioNet Credentialed Health Data License 1.5.0 (no redistribution)",
            "sha256": sha,
            "preprocessing": {"truncation": "ICD-9: E-codes first 4 characters, others first 3 (medGAN/EHRDiff); "
                                            "procedures first 3; ICD-10 category = first 3",
                              "procedures": bool(procedures), "min_count": int(min_count), "icd10": icd10,
                              "on_bad_code": on_bad_code, "mortality_label": bool(mortality_label),
                              "aggregation": "any admission of the patient (binary)"},
            "counts": counts}
    return from_matrix(X, columns, kinds, name="mimic3", label_columns=labels, meta=meta,
                       split=tuple(float(f) for f in split), split_seed=split_seed)
