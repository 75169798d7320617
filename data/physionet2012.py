"""PhysioNet/CinC Challenge 2012 ICU records -> a fixed-width vector of per-variable summaries + in-hospital death."""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from .base import EHRData, register_dataset
from .cache import read_csv_strict, sha256_file
from .matrix import minmax_inverse, split_and_scale

HOW_TO_GET = ("download set-a.tar.gz, set-b.tar.gz, Outcomes-a.txt and Outcomes-b.txt from "
              "https://physionet.org/content/challenge-2012/1.0.0/ (open access, ODC-By 1.0) into data.path")
# Physiologically possible ranges (inclusive, challenge units). A value outside is an impossible value (e.g. -1 for a
# missing descriptor, HR 0, pH 735, Temp -17.8) and is treated as not measured: dropped and counted per parameter.
# These bounds are this benchmark's choice (wide on purpose: they remove impossible values, not abnormal ones).
BOUNDS = {
    "ALP": (1, 5000), "ALT": (1, 20000), "AST": (1, 20000), "Albumin": (0.5, 7), "BUN": (1, 300),
    "Bilirubin": (0, 80), "Cholesterol": (20, 1000), "Creatinine": (0.1, 30), "DiasABP": (1, 300),
    "FiO2": (0.21, 1), "GCS": (3, 15), "Glucose": (10, 2000), "HCO3": (1, 60), "HCT": (5, 80), "HR": (1, 300),
    "K": (1, 15), "Lactate": (0.1, 40), "MAP": (1, 300), "Mg": (0.2, 10), "NIDiasABP": (1, 300),
    "NIMAP": (1, 300), "NISysABP": (1, 300), "Na": (90, 200), "PaCO2": (1, 200), "PaO2": (1, 800),
    "Platelets": (1, 3000), "RespRate": (1, 100), "SaO2": (20, 100), "SysABP": (1, 300), "Temp": (25, 45),
    "TroponinI": (0, 100), "TroponinT": (0, 50), "Urine": (0, 10000), "WBC": (0.1, 500), "Weight": (20, 300),
    "pH": (6.5, 8.0),
    # descriptors (recorded once at 00:00; the 00:00 Weight row is the first Weight observation) and MechVent
    "Age": (0, 120), "Gender": (0, 1), "Height": (100, 250), "ICUType": (1, 4), "MechVent": (0, 1),
}
VARIABLES = tuple(sorted((v for v in BOUNDS if v not in ("Age", "Gender", "Height", "ICUType", "MechVent")),
                         key=str.lower))  # the 36 time series (incl. Weight)
KNOWN = set(BOUNDS) | {"RecordID"}
STATS = ("first", "last", "min", "max", "mean")
ICU_TYPES = ("ICU_CORONARY", "ICU_CARDIAC_SURGERY", "ICU_MEDICAL", "ICU_SURGICAL")  # ICUType 1..4
LABEL = "IN_HOSPITAL_DEATH"


def _members(folder: Path, s: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every record file of set `s`: from set-s.tar.gz read in memory, else a set-s/ folder."""
    archive = folder / f"set-{s}.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".txt"):
                    yield f"{archive.name}:{m.name}", tf.extractfile(m).read()
    elif (folder / f"set-{s}").is_dir():
        for p in sorted((folder / f"set-{s}").glob("*.txt")):
            yield str(p), p.read_bytes()
    else:
        raise FileNotFoundError(f"physionet2012: neither set-{s}.tar.gz nor set-{s}/ found in {folder}; {HOW_TO_GET}")


def read_set(folder: Path, s: str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Long table (record, minutes, parameter, value) of one set, its record ids and member names.

    All files are parsed in one pandas call: each file's header is checked and stripped, ':' in HH:MM becomes a field
    separator, and the record of every line comes from the per-file line counts (np.repeat), so no per-line Python.
    """
    bodies, ids, names, n_lines = [], [], [], []
    for name, raw in _members(folder, s):
        head, _, body = raw.partition(b"\n")
        if head.strip() != b"Time,Parameter,Value":
            raise ValueError(f"{name}: first line {head[:40]!r} is not the header 'Time,Parameter,Value'")
        stem = re.search(r"(\d+)\.txt$", name)
        if stem is None:
            raise ValueError(f"{name}: record file names must be <RecordID>.txt")
        if body and not body.endswith(b"\n"):
            body += b"\n"
        bodies.append(body)
        ids.append(int(stem.group(1)))
        names.append(name)
        n_lines.append(body.count(b"\n"))
    if not bodies:
        raise ValueError(f"physionet2012: set {s} in {folder} holds no record files (<RecordID>.txt)")
    n_lines = np.asarray(n_lines)
    starts = np.r_[0, np.cumsum(n_lines)]
    buf = b"".join(bodies).replace(b":", b",")
    kw = dict(header=None, names=["h", "m", "parameter", "value"], keep_default_na=False, na_values=[""],
              skip_blank_lines=False)
    try:
        try:  # fast path: numeric fields parsed by the C reader
            df = pd.read_csv(io.BytesIO(buf), dtype={"h": "float64", "m": "float64", "parameter": "category",
                                                     "value": "float64"}, **kw)
        except ValueError as e:
            if isinstance(e, pd.errors.ParserError):
                raise
            df = pd.read_csv(io.BytesIO(buf), dtype=str, **kw)  # a non-numeric field: coerce below, count or report
    except pd.errors.ParserError as e:
        line = re.search(r"line (\d+)", str(e))
        k = int(line.group(1)) - 1 if line else 0
        f = int(np.searchsorted(starts, k, side="right")) - 1
        raise ValueError(f"{names[f]}: malformed row at line {k - starts[f] + 2} ({str(e).strip()}); expected "
                         "'HH:MM,Parameter,Value'") from None
    if len(df) != n_lines.sum():
        raise ValueError(f"physionet2012: set {s} parsed into {len(df)} rows for {n_lines.sum()} lines; a record "
                         "file has quoted or multi-line fields")
    rec = np.repeat(np.arange(len(ids)), n_lines)
    h, m = (pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64, na_value=np.nan) for c in ("h", "m"))
    blank = df.isna().all(axis=1).to_numpy()
    bad_time = ~blank & (np.isnan(h) | np.isnan(m) | (m >= 60) | (m < 0) | (h < 0))
    if bad_time.any():
        i = int(bad_time.nonzero()[0][0])
        line = i - starts[rec[i]] + 2
        raise ValueError(f"{names[rec[i]]}: malformed time {df['h'].iloc[i]}:{df['m'].iloc[i]} at line {line}; "
                         "expected HH:MM")
    param = df["parameter"].astype("category")
    stripped = param.cat.categories.astype(str).str.strip()
    param = param.cat.rename_categories(stripped) if stripped.is_unique else param.str.strip().astype("category")
    out = pd.DataFrame({"record": rec, "minutes": h * 60 + m, "parameter": param,
                        "value": pd.to_numeric(df["value"], errors="coerce")})
    return out[~blank], np.asarray(ids, dtype=np.int64), names


def read_outcomes(folder: Path, s: str) -> tuple[pd.Series, Path]:
    """In-hospital death (0/1) indexed by RecordID from Outcomes-s.txt."""
    path = folder / f"Outcomes-{s}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"physionet2012: {path.name} not found in {folder}; {HOW_TO_GET}")
    o = read_csv_strict(path, ["RecordID", "In-hospital_death"], case_insensitive=False)
    rid = pd.to_numeric(o["RecordID"], errors="coerce")
    death = o["In-hospital_death"].str.strip()
    bad = rid.isna() | ~death.isin(["0", "1"])
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: line {i + 2} has RecordID {o['RecordID'].iloc[i]!r} and In-hospital_death "
                         f"{o['In-hospital_death'].iloc[i]!r}; expected an integer id and 0 or 1")
    dup = rid.duplicated().to_numpy()
    if dup.any():
        i = int(dup.nonzero()[0][0])
        raise ValueError(f"{path}: duplicated patient RecordID {int(rid.iloc[i])} at line {i + 2}")
    return pd.Series((death == "1").to_numpy(np.float64), index=rid.astype(np.int64).to_numpy()), path


def _count_by_name(codes: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    ids, n = np.unique(codes, return_counts=True)
    return {str(names[i]): int(c) for i, c in sorted(zip(ids, n), key=lambda t: -t[1])}


def summarise(long: pd.DataFrame, n: int, stats: Sequence[str], counts: dict) -> tuple[np.ndarray, list[str], list[str]]:
    """Apply the cleaning rules and build the raw (unscaled, NaN = missing) patient x feature matrix."""
    order = [*VARIABLES, "Age", "Gender", "Height", "ICUType", "MechVent", "RecordID"]
    cats = [str(c) for c in long["parameter"].cat.categories]
    to_order = np.array([order.index(c) if c in order else -1 for c in cats] + [-1])  # last: empty name (code -1)
    code = long["parameter"].cat.codes.to_numpy()
    p = to_order[code]
    counts["rows_empty_parameter"] = int((code < 0).sum())
    counts["rows_unknown_parameter"] = _count_by_name(code[(code >= 0) & (p < 0)], cats)
    value = long["value"].to_numpy(np.float64)
    no_value = (p >= 0) & np.isnan(value)
    counts["rows_missing_or_non_numeric_value"] = int(no_value.sum())
    lo = np.array([BOUNDS.get(c, (-np.inf, np.inf))[0] for c in order])[p]
    hi = np.array([BOUNDS.get(c, (-np.inf, np.inf))[1] for c in order])[p]
    impossible = (p >= 0) & ((value < lo) | (value > hi))
    counts["rows_impossible_value"] = _count_by_name(p[impossible], order)
    keep = (p >= 0) & ~no_value & ~impossible & (p != order.index("RecordID"))
    clean = pd.DataFrame({"record": long["record"].to_numpy()[keep], "p": p[keep],
                          "minutes": long["minutes"].to_numpy()[keep], "value": value[keep]})
    grp = ["record", "p", "minutes"]
    dup = clean.duplicated(grp, keep=False).to_numpy()
    counts["rows_duplicate_timestamp"] = _count_by_name(clean["p"].to_numpy()[dup], order)
    clean = clean.groupby(grp, sort=True)["value"].mean().reset_index()  # duplicates -> their mean; time-ordered

    nv = len(VARIABLES)
    ts = clean[clean["p"] < nv]
    agg = ts.groupby(["record", "p"], sort=True)["value"].agg(list(stats))
    feats, columns = [], []
    rec, var = (agg.index.get_level_values(k).to_numpy() for k in ("record", "p"))
    for s in stats:  # one dense (n x 36) array per statistic
        A = np.full((n, nv), np.nan)
        A[rec, var] = agg[s].to_numpy()
        feats.append(A)
    F = np.stack(feats, axis=2).reshape(n, nv * len(stats))  # column order: variable-major, then statistic
    columns = [f"{v}_{s}" for v in VARIABLES for s in stats]
    kinds = ["continuous"] * len(columns)

    desc = clean[(clean["p"] >= nv) & (clean["p"] < nv + 4)]
    firsts = desc.groupby(["record", "p"], sort=True)["value"].first()
    counts["descriptor_rows_repeated"] = int(len(desc) - len(firsts))
    D = np.full((n, 4), np.nan)  # Age, Gender, Height, ICUType
    D[firsts.index.get_level_values(0), firsts.index.get_level_values(1) - nv] = firsts.to_numpy()
    icu = np.round(D[:, 3])
    counts["records_icutype_missing"] = int(np.isnan(icu).sum())
    onehot = np.stack([(icu == t + 1) for t in range(4)], axis=1).astype(np.float64)
    vent = np.zeros(n)
    mv = clean[clean["p"] == order.index("MechVent")].groupby("record")["value"].max()
    vent[mv.index.to_numpy()] = mv.to_numpy()
    X = np.concatenate([F, D[:, [0, 2]], np.round(D[:, [1]]), onehot, vent[:, None]], axis=1)
    columns += ["AGE", "HEIGHT", "SEX_M", *ICU_TYPES, "MECHVENT"]
    kinds += ["continuous", "continuous", "binary", "binary", "binary", "binary", "binary", "binary"]
    return X, columns, kinds


def read_sets(folder: Path, sets: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict, dict]:
    """All sets: long table (records numbered 0..n-1 over the sets), RecordIDs, labels, sha256s, per-set counts."""
    longs, ids, labels, sha, per_set = [], [], [], {}, {}
    for s in map(str, sets):
        long, rid, names = read_set(folder, s)
        y, opath = read_outcomes(folder, s)
        missing = ~np.isin(rid, y.index.to_numpy())
        if missing.any():
            raise ValueError(f"{opath}: no outcome row for record {rid[missing][0]} "
                             f"({names[int(missing.argmax())]}); expected one row per record")
        long["record"] += sum(map(len, ids))
        longs.append(long)
        ids.append(rid)
        labels.append(y.reindex(rid).to_numpy())
        per_set[s] = {"records": int(len(rid)), "deaths": int(labels[-1].sum()),
                      "outcome_rows_without_record": int((~y.index.isin(rid)).sum())}
        sha[opath.name] = sha256_file(opath)
        if (folder / f"set-{s}.tar.gz").is_file():
            sha[f"set-{s}.tar.gz"] = sha256_file(folder / f"set-{s}.tar.gz")
    ids_all = np.concatenate(ids)
    uniq, cnt = np.unique(ids_all, return_counts=True)
    if (cnt > 1).any():
        raise ValueError(f"physionet2012: duplicated patient RecordID {uniq[cnt > 1][0]} across the record files of "
                         f"sets {', '.join(map(str, sets))}; expected each record once")
    long = pd.concat(longs, ignore_index=True)
    long["parameter"] = long["parameter"].astype("category")  # concat of differing categories gives strings
    rid_rows = long[long["parameter"] == "RecordID"]
    mismatch = rid_rows["value"].to_numpy() != ids_all[rid_rows["record"].to_numpy()]
    if mismatch.any():
        i = int(mismatch.argmax())
        raise ValueError(f"physionet2012: record file {ids_all[rid_rows['record'].iloc[i]]}.txt holds RecordID "
                         f"{rid_rows['value'].iloc[i]:g}; expected the file's own id")
    return long, ids_all, np.concatenate(labels), sha, per_set


@register_dataset("physionet2012")
def load_physionet2012(path: str, sets: Sequence[str] = ("a", "b"), stats: Sequence[str] = ("min", "max", "mean"),
                       missing_indicators: bool = False, hours: float = 48.0,
                       split: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0) -> EHRData:
    """CinC 2012 sets -> per record: `stats` of each of the 36 time series, AGE, HEIGHT, SEX_M, ICU type one-hot,
    MECHVENT (ever ventilated), [<VAR>_OBSERVED indicators], IN_HOSPITAL_DEATH (label, from Outcomes-x.txt).

    Default width: 36 x 3 + 8 = 116 features + the label = 117 columns (EHRDiff's CinC vector had 115; its recipe
    is unpublished). Cleaning rules (all counted in meta['counts']): empty or unknown parameter names, empty or
    non-numeric values, values outside BOUNDS and rows after `hours` are dropped; values sharing a (record,
    parameter, time) are averaged; a column no record has (small subsets only) is dropped and listed.
    Missing rule: a variable never validly measured in a record leaves its statistics missing; missing cells take
    the train-split median (SEX_M: train mode); MechVent absent = 0 (it is only charted while ventilated).
    Continuous columns are min-max scaled to [0, 1] on train (meta['scaling']; `to_clinical_units` maps back).
    """
    bad_stats = [s for s in stats if s not in STATS]
    if bad_stats or not stats:
        raise ValueError(f"physionet2012: unknown statistic {bad_stats[0] if bad_stats else None!r}; "
                         f"valid choices: {', '.join(STATS)}")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"physionet2012: folder {folder} does not exist; {HOW_TO_GET}")
    long, ids, labels, sha, per_set = read_sets(folder, sets)
    late = long["minutes"] > hours * 60
    counts: dict = {"rows_total": int(len(long)), "rows_after_hours": int(late.sum())}
    X, columns, kinds = summarise(long[~late], len(ids), stats, counts)
    if missing_indicators:
        obs = ~np.isnan(X[:, [columns.index(f"{v}_{stats[0]}") for v in VARIABLES]])
        X = np.concatenate([X, obs.astype(np.float64)], axis=1)
        columns += [f"{v}_OBSERVED" for v in VARIABLES]
        kinds += ["binary"] * len(VARIABLES)
    nan = np.isnan(X)
    counts["records_never_measured"] = {c: int(k) for c, k in zip(columns, nan.sum(axis=0)) if k}
    keep = ~nan.all(axis=0)  # a statistic no record has (only in small subsets): dropped and listed
    dropped = [c for c, k in zip(columns, keep) if not k]
    X = np.concatenate([X[:, keep], labels[:, None]], axis=1)
    columns = [c for c, k in zip(columns, keep) if k] + [LABEL]
    kinds = [t for t, k in zip(kinds, keep) if k] + ["binary"]
    meta = {"source": "PhysioNet/CinC Challenge 2012 v1.0.0, https://physionet.org/content/challenge-2012/1.0.0/",
            "licence": "ODC-By 1.0; cite Silva et al. 2012, Comput Cardiol 39:245-248",
            "sha256": sha, "sets": per_set, "row_order": "by set, then file order in the archive, before the split",
            "preprocessing": {"stats": list(stats), "hours": float(hours),
                              "missing_indicators": bool(missing_indicators),
                              "bounds": {k: list(v) for k, v in BOUNDS.items()},
                              "duplicates": "values with the same (record, parameter, time) averaged",
                              "impossible": "values outside bounds treated as not measured"},
            "counts": counts, "dropped_columns": {"never measured in any record": dropped}}
    return split_and_scale(X, columns, kinds, name="physionet2012", label_columns=[LABEL], meta=meta,
                           split=split, split_seed=split_seed)


def to_clinical_units(Z: np.ndarray, data: EHRData) -> np.ndarray:
    """Map a scaled physionet2012 matrix (real or synthetic) back to clinical units with data.meta['scaling']."""
    return minmax_inverse(Z, data.meta["scaling"], data.columns)
