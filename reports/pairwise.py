"""Two rows compared on one metric: the difference with its 95 % interval, wins and ties, the pairwise table."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import Table
from .ranking import NO_LEVEL, deviation, level_names, run_levels


def within(models: list[str]):
    """Row labels inside one level's sentence: without the " [setting=value]" suffix that all of them share (the
    level's name says it), else unchanged."""
    tails = {m[m.rfind(" ["):] if m.endswith("]") and " [" in m else "" for m in models}
    if len(tails) != 1 or "" in tails:
        return str
    cut = len(tails.pop())
    return lambda m: m[:-cut]


def levels(t: Table, models: pd.Index) -> dict[str, list[str]]:
    """Rows grouped by level (target epsilon and training budget; one group when all share one), in summary order."""
    lv, names = run_levels(t.runs), level_names(t.runs)
    groups: dict[str, list[str]] = {}
    for m in models:
        groups.setdefault(names.get(lv.get(m, NO_LEVEL), ""), []).append(m)
    return groups


def difference(t: Table, metric: str, a: str, b: str) -> tuple[float, float, float]:
    """How much better a is than b on one metric (> 0: a better), with its 95 % interval: Welch's t over the
    seeds, normal where the metric's own standard error sets the noise. The key is the ranks' (reports.ranking
    `deviation` from the ideal, where the metric has one)."""
    c = t.cells[(t.cells["metric"] == metric) & t.cells["model"].isin([a, b])].set_index("model").reindex([a, b])
    goal = str(c["goal"].iloc[0])
    if c["ideal"].notna().all():
        key = deviation(c["mean"], goal, c["ideal"])
    else:
        key = -c["mean"] if goal == "max" else c["mean"]
    d = float(key[b] - key[a])
    se, n = c["noise"].to_numpy(dtype=float), c["n"].to_numpy(dtype=float)
    var = se ** 2
    dof = var.sum() ** 2 / np.sum(var ** 2 / np.maximum(n - 1, 1)) if (n >= 2).all() and var.sum() > 0 else np.inf
    q = float(stats.t.ppf(0.975, dof)) if np.isfinite(dof) else 1.959963984540054
    half = q * float(np.sqrt(var.sum()))
    return d, d - half, d + half


def compare(t: Table, metric: str, a: str, b: str) -> tuple[float, float, float] | None:
    """difference() where both rows have a ranked value with known noise, else None."""
    c = t.cells[(t.cells["metric"] == metric) & t.cells["model"].isin([a, b])]
    if len(c) < 2 or c["mean"].isna().any() or c["rank"].isna().any() or c["noise"].isna().any():
        return None
    return difference(t, metric, a, b)


def lead_of(t: Table, heads: dict[str, str], a: str, b: str) -> tuple[list[str], list[str], list[str]]:
    """Headline families where a beats b (the difference's 95 % interval lies above 0), where they tie, and where
    b beats a (the interval lies below 0)."""
    won, tied, lost = [], [], []
    for fam, metric in heads.items():
        diff = compare(t, metric, a, b)
        if diff is None:
            continue
        d, lo, hi = diff
        if lo > 0:
            won.append(f"{fam} ({metric} by {d:.3g}, 95 % interval [{lo:.3g}, {hi:.3g}])")
        elif hi >= 0:
            tied.append(fam)
        else:
            lost.append(f"{fam} ({metric} by {-d:.3g}, 95 % interval [{-hi:.3g}, {-lo:.3g}])")
    return won, tied, lost


def pairwise(t: Table, heads: dict[str, str]) -> pd.DataFrame:
    """Per level, the generator first by mean rank against every other ranked one on each headline score: how much
    better the first is (< 0: worse) with the 95 % interval of the difference; "tie" where the interval holds 0."""
    s = t.summary
    ranked = s[~s["reference"].astype(bool) & (s["failed"] == "") & s["mean_rank"].notna()]
    gen, rows = t.generators, []
    for lvl, models in levels(t, ranked.index).items():
        for other in models[1:]:
            row = {"level": lvl, "first vs other": f"{gen.get(models[0], models[0])} vs {gen.get(other, other)}"}
            for fam, metric in heads.items():
                diff = compare(t, metric, models[0], other)
                word = ("—" if diff is None else "better" if diff[1] > 0 else "worse" if diff[2] < 0 else "tie")
                row[f"{fam}: {metric}"] = word if diff is None else f"{word} {diff[0]:+.3g} [{diff[1]:.3g}, {diff[2]:.3g}]"
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    return (out if out["level"].nunique() > 1 or out["level"].iloc[0] else out.drop(columns="level")).set_index(
        "first vs other")
