"""Ranks within noise: one metric's ranking key, who beats whom beyond noise, ranks and best marks, and the levels
(target ε, training budget) within which rows compete."""
from __future__ import annotations

import numpy as np
import pandas as pd


def sig12(s: pd.Series) -> pd.Series:
    """Round to 12 significant digits so values equal up to float summation order tie exactly."""
    x = s.to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where((x == 0) | ~np.isfinite(x), 0, np.floor(np.log10(np.abs(x))))
    return pd.Series(np.round(x / 10.0 ** mag, 11) * 10.0 ** mag, index=s.index)


def deviation(means: pd.Series, goal: str, ideal: pd.Series | float | None = None) -> pd.Series:
    """The ranking key of a metric with an ideal (registry `ideal`): how far each mean misses it, clipped at 0.

    target: |mean - ideal|; min: mean - ideal; max: ideal - mean; clipped at 0, so a value on the good side of the
    ideal counts as the ideal itself. Noise (a value within noise of the ideal) is the comparison's business
    (`beats`), not the key's: taking each cell's own tolerance off its key would favour the noisier cell.
    """
    ideal = pd.Series(ideal, index=means.index, dtype=float) if not isinstance(ideal, pd.Series) else ideal
    d = {"target": (means - ideal).abs(), "min": means - ideal, "max": ideal - means}[goal]
    return d.clip(lower=0.0).where(means.notna())


def beats(means: pd.Series, goal: str, ideal: pd.Series | float | None = None,
          noise: pd.Series | None = None) -> pd.DataFrame | None:
    """[i, j] True where model j beats model i on this metric beyond noise; rows and columns are the models with a
    mean. None when the metric does not rank (info, a target without ideal, nothing valid)."""
    if goal not in ("max", "min", "target"):
        return None
    has_ideal = ideal is not None and not (isinstance(ideal, pd.Series) and ideal.isna().all())
    if goal == "target" and not has_ideal:
        return None
    key = deviation(means, goal, ideal) if has_ideal else (means if goal == "min" else -means)
    valid = sig12(key.dropna())
    if valid.empty:
        return None
    k = valid.to_numpy(dtype=float)
    s = np.zeros_like(k) if noise is None else np.nan_to_num(noise.reindex(valid.index).to_numpy(dtype=float))
    margin = 2 * np.sqrt(s[:, None] ** 2 + s[None, :] ** 2)
    return pd.DataFrame(k[None, :] + margin < k[:, None], index=valid.index, columns=valid.index)


def rank_metric(means: pd.Series, goal: str, ideal: pd.Series | float | None = None,
                noise: pd.Series | None = None) -> pd.Series:
    """Rank models on one metric (1 = best); a missing/failed mean takes the shared last places, so a failure never
    improves a model's rank. All-missing -> all NaN (metric unranked). With an ideal (always for goal "target") the
    key is the `deviation` from it, lower is better.

    Ties are ties: model j beats model i when j's key is better by more than 2 sqrt(noise_i^2 + noise_j^2)
    (`noise`: each mean's standard error; None = exact comparison), and rank_i = 1 + (models that beat i) + 1/2
    (models neither beating nor beaten by i), which is the average rank when ties are exact equalities."""
    m = beats(means, goal, ideal, noise)
    if m is None:
        return pd.Series(np.nan, index=means.index)
    b = m.to_numpy()
    tied = ~b & ~b.T
    ranks = pd.Series(1 + b.sum(1) + 0.5 * (tied.sum(1) - 1), index=m.index)
    worst = (len(m) + 1 + len(means)) / 2.0  # average of the places len(valid)+1 .. len(means)
    return ranks.reindex(means.index).fillna(worst)


def best_mask(means: pd.Series, goal: str, ideal: pd.Series | float | None = None,
              noise: pd.Series | None = None) -> pd.Series:
    """True where no other model beats a mean beyond noise (rank_metric's rule; info metrics never)."""
    m = beats(means, goal, ideal, noise)
    if m is None:
        return pd.Series(False, index=means.index)
    return (~m.any(axis=1)).reindex(means.index, fill_value=False)


NO_LEVEL = (np.inf, 0.0)  # not private, the table's one budget


def run_levels(runs: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Model row -> its level (target epsilon, training budget). Ranks, best marks and profile ranks compare rows of
    one level only: a private generator is not a competitor of a non-private one, nor of one given another budget.
    Epsilon: load_runs' target_epsilon (inf: not private). Budget: when the runs hold several budget labels (e.g.
    "compute 650 x ehrdiff" and "compute 1950 x ehrdiff"), the largest training FLOPs among the runs of the row's
    label, so levels sort by size; 0 when there is one label."""
    if runs.empty:
        return {}
    col = lambda c, default: runs[c] if c in runs else pd.Series(default, index=runs.index)  # noqa: E731
    eps = pd.to_numeric(col("target_epsilon", None), errors="coerce").fillna(np.inf)
    label = budget_labels(runs)
    flops = pd.to_numeric(col("train_flops", None), errors="coerce").fillna(0.0)
    size = flops.groupby(label).transform("max") if label.nunique() > 1 else pd.Series(0.0, index=runs.index)
    return {m: (float(e), float(z)) for m, e, z in zip(runs["model"], eps, size)}


def budget_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's budget label; an unfinished run, which has recorded no budget yet, takes its row's complete runs'
    label (else the label most complete runs share)."""
    label = (runs["budget"] if "budget" in runs else pd.Series("", index=runs.index)).fillna("").astype(str)
    ok = runs["ok"].astype(bool) if "ok" in runs else pd.Series(True, index=runs.index)
    if ok.all() or not ok.any():
        return label
    own = label[ok].groupby(runs.loc[ok, "model"]).first()
    common = label[ok].mode().iloc[0]
    return label.where(ok, runs["model"].map(own).fillna(common))


def level_names(runs: pd.DataFrame) -> dict[tuple[float, float], str]:
    """Level -> its name: "ε=1", "not private", the budget label, or both joined by ", "."""
    lv = run_levels(runs)
    label = dict(zip(runs["model"], budget_labels(runs)))
    several_eps = len({e for e, _ in lv.values()}) > 1
    several_budgets = len({z for _, z in lv.values()}) > 1
    names = {}
    for m, (e, z) in lv.items():
        parts = ([("not private" if e == np.inf else f"ε={e:g}")] if several_eps else []) + (
            [label.get(m, "")] if several_budgets else [])
        names[(e, z)] = ", ".join(parts)
    return names
