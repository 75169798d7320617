"""ICD code parsing and the medGAN / EHRDiff truncation: ICD-9 E-codes keep 4 characters, all other codes 3."""
from __future__ import annotations

import pandas as pd

# Accepted ICD-9-CM diagnosis spellings (after strip + upper-case):
#   plain (MIMIC-III / MIMIC-IV: dot removed, leading zeros kept): 3-5 digits, V + 2-4 digits, E + 3-4 digits;
#   dotted (category.subdivision): "038.9", "V10.46", "E878.2";
#   short head (zero_pad=True only, e.g. UCI Diabetes-130 whose exporter dropped leading zeros): "8", "38", "V3", "E8".
DIAG_PLAIN = r"\d{3,5}|V\d{2,4}|E\d{3,4}"
DIAG_HEAD = r"\d{1,3}|V\d{1,2}|E\d{1,3}"
# ICD-9-CM procedure codes (volume 3): plain "3961"/"016", dotted "39.61"/"01.6".
PROC_PLAIN = r"\d{3,4}"
PROC_DOTTED = r"(\d{2})\.(\d)\d?"
# ICD-10-CM diagnoses (letter, digit, then up to 5 alphanumerics) and ICD-10-PCS procedures (7 alphanumerics).
ICD10_DIAG = r"[A-Z]\d[0-9A-Z]{1,5}"
ICD10_PROC = r"[0-9A-HJ-NP-Z]{7}"

FORMATS = {
    ("diagnosis", 9): "ICD-9-CM diagnosis codes such as 4280, 0389, V1046, E8782 (or dotted 428.0)",
    ("procedure", 9): "ICD-9-CM procedure codes such as 3961, 016 (or dotted 39.61)",
    ("diagnosis", 10): "ICD-10-CM diagnosis codes such as I5020 or I50.20",
    ("procedure", 10): "ICD-10-PCS procedure codes of 7 characters such as 02HV33Z",
}


def _normalise(codes: pd.Series) -> pd.Series:
    return codes.astype("string").str.strip().str.upper()


def _pad_head(head: pd.Series) -> pd.Series:
    """Restore leading zeros of a category head: 8 -> 008, V3 -> V03, E8 -> E008."""
    is_v = head.str.startswith("V").fillna(False)
    is_e = head.str.startswith("E").fillna(False)
    digits = head.str.lstrip("VE")
    out = digits.str.zfill(3)
    out = out.mask(is_v, "V" + digits.str.zfill(2))
    return out.mask(is_e, "E" + digits.str.zfill(3))


def truncate_icd9(codes: pd.Series, kind: str = "diagnosis", zero_pad: bool = False) -> pd.Series:
    """Truncate ICD-9 codes to their category, vectorised; <NA> where a code has an unknown format.

    Diagnoses: E-codes keep their first 4 characters, all other codes their first 3 (medGAN's
    `convert_to_3digit_icd9`, prescribed by the EHRDiff README; codes already that short are kept, e.g. V10, E878).
    Dotted codes are cut at the dot after restoring the category's leading zeros (250.83 -> 250, 8.1 -> 008).
    With zero_pad=True a short head without a dot is also padded (UCI Diabetes-130 writes 008 as "8").
    Procedures: the first 3 characters of the dot-less code ("3961" -> "396"), the same rule applied to volume 3;
    EHRDiff's 711 procedure columns imply 3-character categories (the README does not state the procedure rule).
    Missing input (<NA>) stays <NA>; the caller tells missing and malformed apart with the input's own NA mask.
    """
    s = _normalise(codes)
    if kind == "diagnosis":
        plain = s.str.fullmatch(DIAG_PLAIN).fillna(False)
        head = s.str.extract(rf"^({DIAG_HEAD})\.\d{{0,2}}$", expand=False)
        if zero_pad:
            short = s.str.fullmatch(DIAG_HEAD).fillna(False) & ~plain
            head = head.mask(short, s)
        padded = _pad_head(head)
        is_e = s.str.startswith("E").fillna(False)
        cut = s.str.slice(0, 3).mask(is_e, s.str.slice(0, 4))
        return cut.where(plain, padded)
    if kind == "procedure":
        plain = s.str.fullmatch(PROC_PLAIN).fillna(False)
        dotted = s.str.extract(rf"^{PROC_DOTTED}$")
        return s.str.slice(0, 3).where(plain, dotted[0] + dotted[1])
    raise ValueError(f"unknown ICD code kind {kind!r}; valid choices: diagnosis, procedure")


def truncate_icd10(codes: pd.Series, kind: str = "diagnosis") -> pd.Series:
    """ICD-10 category: the first 3 characters of a valid ICD-10-CM / ICD-10-PCS code (dot removed); <NA> if invalid."""
    s = _normalise(codes).str.replace(".", "", regex=False)
    pattern = {"diagnosis": ICD10_DIAG, "procedure": ICD10_PROC}.get(kind)
    if pattern is None:
        raise ValueError(f"unknown ICD code kind {kind!r}; valid choices: diagnosis, procedure")
    return s.str.slice(0, 3).where(s.str.fullmatch(pattern).fillna(False))


def bad_code_message(where: str, codes: pd.Series, truncated: pd.Series, kind: str, version: int = 9) -> str | None:
    """One sentence about the first code that is present but could not be parsed, or None when all parsed.

    `codes` keeps the index of the CSV reader (row r is file line r + 2), so filtered subsets still name the right line.
    """
    bad = (codes.notna() & truncated.isna()).to_numpy()
    if not bad.any():
        return None
    pos = int(bad.nonzero()[0][0])
    return (f"{where}: unknown code format {codes.iloc[pos]!r} at line {int(codes.index[pos]) + 2}; expected "
            f"{FORMATS[(kind, version)]} ({int(bad.sum())} such row(s) in total)")
