"""Formatted leaderboard frames: metric cells (mean ± sd with seeds), the summary's columns and the failures."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .aggregate import ARROWS, EFFICIENCY, RANK_FAMILIES, Table
from .headline import FEW_MARK, FEW_SEEDS

REF_SUFFIX, FAILED_SUFFIX = " (reference)", " (failed)"


def row_labels(t: Table) -> list[str]:
    """Model names for display: references and models that failed the sanity gate carry a suffix, so they never
    read as ranked competitors."""
    refs = set(t.references)
    failed = set(t.summary.index[t.summary["failed"] != ""]) if "failed" in t.summary else set()
    return [m + REF_SUFFIX if m in refs else m + FAILED_SUFFIX if m in failed else m for m in t.models]


def fmt_num(x: float, sig: int = 4) -> str:
    """A number with `sig` significant digits (integers >= 1000 without decimals); NaN -> '—'."""
    if x is None:
        return "—"
    x = float(x)
    if not math.isfinite(x):
        return "—" if math.isnan(x) else ("∞" if x > 0 else "-∞")
    if abs(x) >= 1000 or (x == int(x) and abs(x) >= 1):
        return f"{x:,.0f}"
    return f"{x:.{sig}g}"


def fmt_cell(mean: float, std: float, n: int, n_error: int = 0) -> str:
    """'mean ± std (n)' with the mean rounded to the std's second significant digit; single seed: 'mean (n=1†)';
    fewer than FEW_SEEDS seeds carry FEW_MARK."""
    if n == 0:
        return f"error ×{n_error}" if n_error else "—"
    err = f", {n_error} err" if n_error else ""
    few = FEW_MARK if n < FEW_SEEDS else ""
    if n == 1 or std is None or not np.isfinite(std):
        return f"{fmt_num(mean)} (n={n}{few}{err})"
    if std == 0:
        return f"{fmt_num(mean)} ± 0 (n={n}{few}{err})"
    decimals = int(min(6, max(0, 1 - math.floor(math.log10(abs(std))))))
    return f"{mean:,.{decimals}f} ± {std:,.{decimals}f} (n={n}{few}{err})"


def metric_frame(t: Table, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Formatted models x metrics strings and the matching best-cell mask."""
    c = t.cells[t.cells["metric"].isin(metrics)]
    text = c.assign(s=[fmt_cell(m, s, n, e) for m, s, n, e in zip(c["mean"], c["std"], c["n"], c["n_error"])])
    goal = c.drop_duplicates("metric").set_index("metric")["goal"]
    cols = [f"{m} {ARROWS.get(goal[m], '')}".strip() for m in metrics]
    strings = text.pivot(index="model", columns="metric", values="s").reindex(index=t.models, columns=metrics)
    best = c.pivot(index="model", columns="metric", values="best").reindex(index=t.models, columns=metrics)
    labels = row_labels(t)
    return (strings.set_axis(cols, axis=1).set_axis(labels, axis=0),
            best.fillna(False).astype(bool).set_axis(cols, axis=1).set_axis(labels, axis=0))


def summary_frame(t: Table) -> pd.DataFrame:
    """Formatted ranks, profiles, run counts and efficiency columns."""
    s = t.summary
    out = pd.DataFrame(index=pd.Index(row_labels(t), name="model"))
    ref = s["reference"].to_numpy(dtype=bool) if "reference" in s else np.zeros(len(s), bool)
    if "failed" in s:
        ref = ref | (s["failed"] != "").to_numpy()
    unranked = lambda col: ["not ranked" if r else fmt_num(v, 3) for v, r in zip(s[col], ref)]  # noqa: E731
    out["mean rank ↓"] = unranked("mean_rank")
    for f in RANK_FAMILIES:
        out[f"{f} rank ↓"] = unranked(f"rank_{f}")
    for p in [c[len("profile_"):] for c in s.columns if c.startswith("profile_")]:
        out[f"{p} ↓"] = [f"{fmt_num(v, 3)} (#{fmt_num(r, 2)})" if np.isfinite(v) else ("not ranked" if x else "—")
                         for v, r, x in zip(s[f"profile_{p}"], s[f"rank_{p}"], ref)]
    out["runs ok"] = [f"{a}/{b}" for a, b in zip(s["runs_ok"], s["runs_total"])]
    out["seeds"] = s["seeds"].fillna("").to_numpy()
    out["budget"] = s["budget"].fillna("").to_numpy() if "budget" in s else ""
    out["steps / paper steps"] = s["budget_steps"].fillna("").to_numpy() if "budget_steps" in s else ""
    names = {"fit_seconds": "fit s", "sample_seconds": "sample s", "sample_seconds_per_1000": "sample s / 1k records",
             "peak_memory_mb": "peak MB", "n_params": "params", "train_flops": "train FLOPs",
             "sample_flops_per_1000": "sample FLOPs / 1k records", "total_flops": "total FLOPs (train + sample)",
             "fraction_of_paper": "share of paper", "epsilon": "ε spent"}
    for col in EFFICIENCY:
        fmt = (lambda v: f"{v:.3g}") if "flops" in col else (lambda v: fmt_num(v, 3))
        out[names[col]] = s[col].map(lambda v: fmt(v) if v == v else "—").to_numpy()
    out["device"] = s["device"].fillna("").to_numpy()
    return out


def failures_frame(failures: pd.DataFrame) -> pd.DataFrame:
    """Failures for display: one metric failing with the same reason in several runs becomes one row naming every
    model and seed (e.g. a continuous-only metric on binary data in all 18 cells); failures.csv keeps each row."""
    f = failures.copy()
    f["seed"] = f["seed"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v)))
    f = f[["kind", "path", "tag", "data", "model", "seed", "metric", "reason"]].fillna("").astype(str)
    f["runs"] = 1
    single = f[f["kind"] != "metric"]
    g = f[f["kind"] == "metric"].groupby(["tag", "data", "metric", "reason"], sort=False)
    merged = g.agg(kind=("kind", "first"), path=("path", _common_path), model=("model", _joined),
                   seed=("seed", _joined), runs=("path", "size")).reset_index()
    out = pd.concat([single, merged], ignore_index=True).sort_values(["path", "kind", "metric"], kind="stable")
    return out[["kind", "path", "data", "model", "seed", "metric", "runs", "reason"]].reset_index(drop=True)


def _joined(s: pd.Series) -> str:
    return ", ".join(sorted(set(s), key=lambda x: (len(x), x)))


def _common_path(s: pd.Series) -> str:
    if len(s) == 1:
        return s.iloc[0]
    parts = [p.split("/") for p in s]
    common = [a[0] for a in zip(*parts) if len(set(a)) == 1]
    return "/".join(common + ["*"])
