"""A leaderboard's first screen: the question, the budget's regime, a two-sentence verdict and a compact table."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import ARROWS, Table
from .pairwise import lead_of, levels, within
from .ranking import NO_LEVEL, level_names, run_levels

# Each family's headline score: the first of these that ranks on the table's data (passed its calibration ladder).
HEADLINES: dict[str, tuple[str, ...]] = {
    "fidelity": ("detection", "detection_auc", "cooccurrence_pearson", "mmd", "prevalence_pearson"),
    "utility": ("tstr_auroc", "dimwise_prediction"),
    "privacy": ("mia_auc", "exact_copy_rate", "nnaa", "dcr"),
}
EARLY, FULL = 0.10, 1.0  # shares of a paper schedule: below EARLY is early training, from FULL on the whole schedule
FEW_SEEDS = 3            # cells from fewer seeds are marked with FEW_MARK
FEW_MARK = "†"


def interval(mean: float, se: float, n: int) -> tuple[float, float]:
    """95 % interval of a mean: mean ± t(0.975, n - 1) se over n >= 2 seeds, ± 1.96 se from the metric's own
    standard error alone (one seed); (nan, nan) when the noise is unknown."""
    if not (np.isfinite(mean) and np.isfinite(se)) or n < 1:
        return math.nan, math.nan
    q = float(stats.t.ppf(0.975, n - 1)) if n >= 2 else 1.959963984540054
    return mean - q * se, mean + q * se


def headline_metrics(t: Table) -> dict[str, str]:
    """family -> its headline metric in this table: the first of HEADLINES, then of the family's other ranked
    metrics, that has a value and ranks here (the first with a value when none ranks); families without any are
    left out."""
    failed = set(t.ladder.loc[t.ladder["verdict"] == "fail", "metric"]) if not t.ladder.empty else set()
    present = set(t.cells.loc[t.cells["n"] > 0, "metric"])
    family = t.cells.drop_duplicates("metric").set_index("metric")["family"]
    out = {}
    for fam, names in HEADLINES.items():
        have = [m for m in [*names, *(m for m in t.metrics("ranked") if family[m] == fam)] if m in present]
        if have:
            out[fam] = next((m for m in have if m not in failed), have[0])
    return out


@dataclass(frozen=True)
class Score:
    mean: float
    low: float
    high: float
    n: int
    best: bool

    def text(self, digits: int = 3) -> str:
        if self.n == 0 or not np.isfinite(self.mean):
            return "—"
        few = FEW_MARK if self.n < FEW_SEEDS else ""
        body = f"{self.mean:.{digits}f}"
        if np.isfinite(self.low):
            body += f" [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return body + few


def scores(t: Table, metric: str) -> dict[str, Score]:
    """model -> its Score on one metric (mean, 95 % interval, seeds, best mark)."""
    c = t.cells[t.cells["metric"] == metric].set_index("model")
    out = {}
    for m, r in c.iterrows():
        lo, hi = interval(float(r["mean"]), float(r["noise"]), int(r["n"]))
        out[str(m)] = Score(float(r["mean"]), lo, hi, int(r["n"]), bool(r["best"]))
    return out


def shares(t: Table) -> pd.Series:
    """Each non-reference model's mean share of its paper schedule (NaN where unknown)."""
    s = t.summary
    gens = s.index[~s["reference"].astype(bool)]
    return pd.to_numeric(s.loc[gens, "fraction_of_paper"], errors="coerce")


def regime(t: Table, heads: dict[str, str] | None = None) -> str:
    """The budget and what it means: each generator's share of its paper schedule (its range over a compute sweep's
    budgets), smallest first, and the regime at the largest budget; over a compute sweep (given the headline
    scores), which generators reached their schedule and whether each still changes there (plateaus)."""
    sh = shares(t).dropna()
    gens = t.summary[~t.summary["reference"].astype(bool)]
    lv = run_levels(t.runs)
    budgets = sorted({b for b in gens["budget"].fillna("") if b}, key=lambda b: max(
        (lv.get(m, NO_LEVEL)[1] for m in gens.index[gens["budget"] == b]), default=0.0)) if "budget" in gens else []
    what = " | ".join(budgets) or "as configured"
    if sh.empty:
        return f"{what}; no generator recorded its share of the paper schedule."
    gen = sh.index.map(t.generators)
    lo = sh.groupby(gen).min()
    sh = sh.groupby(gen).max().sort_values()  # a compute sweep: how far each one got
    span = lambda m: _pct(sh[m]) if lo[m] == sh[m] else f"{_pct(lo[m])} to {_pct(sh[m])}"  # noqa: E731
    parts = ", ".join(f"{m} {span(m)}" for m in sh.index)
    lead = f"EHRDiff at {span('ehrdiff')} of its paper schedule; " if "ehrdiff" in sh else ""
    slow = sh.iloc[0]
    steps = plateaus(t, heads) if heads else pd.DataFrame()
    if len(steps):  # a compute sweep: how far each one got, and whether it still changes there
        flat = {m for m in sh.index if m in steps.index and steps.at[m, "plateau from"].endswith("FLOPs")}
        done = sh >= FULL
        groups = {"at or past its schedule, on a plateau": [m for m in sh.index if done[m] and m in flat],
                  "at or past its schedule, still changing": [m for m in sh.index if done[m] and m not in flat],
                  "short of its schedule": [m for m in sh.index if not done[m]]}
        name = lambda m: f"{m} ({_pct(sh[m])}{', on a plateau' if m in flat and not done[m] else ''})"  # noqa: E731
        mean = "; ".join(f"{k}: {', '.join(map(name, ms))}" for k, ms in groups.items() if ms)
        return f"{what}: {lead}every generator's share: {parts}. Regime at the largest budgets: {mean}."
    if slow < EARLY:
        mean = f"early training ({sh.index[0]} at {_pct(slow)}): a statement about the first steps, not a converged verdict"
    elif slow >= FULL:
        mean = "every generator ran at least its paper schedule"
    else:
        mean = f"part of the schedules ({sh.index[0]} at {_pct(slow)}), not convergence"
    return f"{what}: {lead}every generator's share: {parts}. Regime: {mean}."


def _pct(x: float) -> str:
    return f"{100 * x:.2g} %" if x < 0.1 else f"{100 * x:.0f} %"


def verdict(t: Table, heads: dict[str, str]) -> str:
    """Two sentences: who leads on the mean rank and on which headline scores the lead is beyond noise (the 95 %
    interval of the difference excludes 0); who is not ranked and why."""
    s = t.summary
    ranked = s[~s["reference"].astype(bool) & (s["failed"] == "") & s["mean_rank"].notna()]
    groups = levels(t, ranked.index)
    first = []
    for lvl, models in groups.items():
        sub = ranked.loc[models]
        prefix = "" if len(groups) == 1 else ("without privacy, " if lvl == "not private" else f"at {lvl}: ")
        if len(sub) == 1:
            first.append(f"{prefix}{sub.index[0]} is the only ranked generator, so there is nothing to rank it "
                         "against (compare it with the references)")
            continue
        lead, runner = sub.index[0], sub.index[1]
        name = within(list(sub.index)) if prefix else str
        order = ", ".join(f"{name(m)} {v:.2f}" for m, v in sub["mean_rank"].iloc[1:].items())
        won, tied, lost = lead_of(t, heads, lead, runner)
        other = name(runner)
        detail = (f"it beats {other} on {_join(won)}" + (f" and ties on {_join(tied)}" if tied else "")
                  if won else f"it ties {other} on every headline score" if not lost
                  else f"it ties {other} on {_join(tied)}" if tied else f"it beats {other} on no headline score")
        if lost:
            detail += f", and trails it on {_join(lost)}"
        first.append(f"{prefix}first by mean rank {name(lead)} ({sub['mean_rank'].iloc[0]:.2f}; {order}); {detail}")
    one = ("; ".join(first) if first else "no generator is ranked") + "."
    out = s[~s["reference"].astype(bool) & (s["failed"] != "")]
    why = out.groupby("failed", sort=False).apply(lambda g: ", ".join(g.index), include_groups=False)
    two = ("Not ranked: " + "; ".join(f"{m} ({w})" for w, m in why.items()) + "." if len(out)
           else "Every generator with complete runs is ranked.")
    return f"{one[0].upper() if one[0].isascii() else one[0]}{one[1:]} {two}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def compact(t: Table, heads: dict[str, str]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Up to three small tables, each (text, best mask): "ranked" generators, "not ranked" ones with the reason,
    and the "references"; columns: mean rank, each family's headline score with its 95 % interval, the sampling
    seconds per 1,000 records, seeds."""
    s = t.summary
    cols = {fam: scores(t, m) for fam, m in heads.items()}
    arrows = {m: ARROWS.get(g, "") for m, g in t.cells.drop_duplicates("metric").set_index("metric")["goal"].items()}
    groups = {"ranked": s.index[~s["reference"].astype(bool) & (s["failed"] == "")],
              "not ranked": s.index[~s["reference"].astype(bool) & (s["failed"] != "")],
              "references": s.index[s["reference"].astype(bool)]}
    out = {}
    for g, models in groups.items():
        if not len(models):
            continue
        text = pd.DataFrame(index=pd.Index(list(models), name="model"))
        if g == "ranked":
            text["mean rank ↓"] = [f"{v:.2f}" if np.isfinite(v) else "—" for v in s.loc[models, "mean_rank"]]
        for fam, metric in heads.items():
            text[f"{fam}: {metric} {arrows.get(metric, '')}".strip()] = [cols[fam][m].text() if m in cols[fam] else "—"
                                                                         for m in models]
        per_1k = pd.to_numeric(s.loc[models, "sample_seconds_per_1000"], errors="coerce")
        text["sample s / 1k"] = [f"{v:.3g}" if np.isfinite(v) else "—" for v in per_1k]
        text["seeds"] = [f"{s.loc[m, 'runs_ok']}{FEW_MARK if s.loc[m, 'runs_ok'] < FEW_SEEDS else ''}" for m in models]
        if g == "not ranked":
            text["why"] = list(s.loc[models, "failed"])
        best = pd.DataFrame(False, index=text.index, columns=text.columns)
        if g == "ranked":
            for fam, metric in heads.items():
                col = [c for c in text.columns if c.startswith(f"{fam}: ")][0]
                best[col] = [bool(m in cols[fam] and cols[fam][m].best) for m in models]
        out[g] = (text, best)
    steps = plateaus(t, heads)
    if not steps.empty:
        out["compute"] = (steps, pd.DataFrame(False, index=steps.index, columns=steps.columns))
    return out


def plateaus(t: Table, heads: dict[str, str]) -> pd.DataFrame:
    """A compute sweep (rows of one generator at several training budgets) read for convergence: per generator, its
    budgets, the largest training FLOPs reached, the smallest budget from which every larger budget (two at least)
    is within noise (2 sqrt(se_a^2 + se_b^2)) of it on every headline score, so a score that creeps up by less than
    the noise per step but beyond it across the steps has not converged, its share of its paper schedule there, and
    its headline scores there (at its largest budget where it has not converged); empty when the table has one
    budget."""
    lv = run_levels(t.runs)
    if len({z for _, z in lv.values()}) < 2:
        return pd.DataFrame()
    s = t.summary[~t.summary["reference"].astype(bool)]
    gen = t.generators
    c = t.cells.set_index(["model", "metric"])
    cols = {fam: scores(t, m) for fam, m in heads.items()}
    rows = []
    for g, models in pd.Series(s.index, index=[gen.get(m, m) for m in s.index]).groupby(level=0):
        order = sorted(models, key=lambda m: lv.get(m, NO_LEVEL)[1])
        flops = [float(pd.to_numeric(s.loc[m, "train_flops"], errors="coerce")) for m in order]
        start = next((k for k in range(len(order) - 2)
                      if all(_same(c, order[k], b, metric) for b in order[k + 1:] for metric in heads.values())), None)
        at = order[start if start is not None else -1]
        share = float(pd.to_numeric(s.loc[at, "fraction_of_paper"], errors="coerce"))
        row = {"generator": g, "budgets": len(order), "largest train FLOPs": f"{max(flops):.3g}",
               "plateau from": (f"{flops[start]:.3g} FLOPs" if start is not None else
                                "fewer than 3 budgets" if len(order) < 3 else
                                "not reached: still changing at the largest budgets"),
               "scores at": f"{'plateau' if start is not None else 'largest budget'}"
                            + (f", {_pct(share)} of its schedule" if np.isfinite(share) else "")}
        for fam, metric in heads.items():
            row[f"{fam}: {metric}"] = cols[fam][at].text() if at in cols[fam] else "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("generator")


def _same(c: pd.DataFrame, a: str, b: str, metric: str) -> bool:
    """Whether two rows' means of one metric agree within 2 sqrt(se_a^2 + se_b^2) (unknown noise: not the same);
    a metric that failed in every seed of both (e.g. no TSTR from a constant synthetic label) has not changed."""
    try:
        ra, rb = c.loc[(a, metric)], c.loc[(b, metric)]
    except KeyError:
        return False
    if ra["n"] == rb["n"] == 0 and ra["n_error"] > 0 and rb["n_error"] > 0:
        return True
    noise = 2 * np.hypot(ra["noise"], rb["noise"])
    return bool(np.isfinite(noise) and abs(ra["mean"] - rb["mean"]) <= noise)


QUESTION = "Which generator makes the most useful synthetic patients at the least privacy risk on {data}{eps}?"
INTERVALS = (f"Scores are means over seeds with 95 % intervals in brackets (t over the seeds, or the metric's own "
             f"standard error when larger); **bold**: beaten beyond noise by no other ranked generator; "
             f"{FEW_MARK}: fewer than {FEW_SEEDS} seeds.")


def intervals_note(t: Table) -> str:
    """INTERVALS and what the seeds' spread holds: a data split per seed (split_from_seed) or one shared split."""
    split = pd.to_numeric(t.runs["split_seed"], errors="coerce") if "split_seed" in t.runs else pd.Series(dtype=float)
    per_row = t.runs.assign(split=split).groupby("model")
    if split.nunique() == 1:
        return INTERVALS + (f" Every seed used one data split (split seed {split.dropna().iloc[0]:g}), so the "
                            "intervals hold training noise, not the split's: a difference could still change with "
                            "another split.")
    if split.isna().any() or (per_row["split"].nunique() <= 1).all():
        return INTERVALS
    if (per_row["split"].nunique() == per_row["seed"].nunique()).all():
        return INTERVALS + " Each seed drew its own data split, so the intervals hold the split's noise too."
    return INTERVALS + " Some seeds shared a data split: the intervals hold part of the split's noise."


def question(t: Table) -> str:
    names = set(level_names(t.runs).values())
    eps = ("" if len(names) < 2 else " at each privacy budget ε" if any(n.startswith(("ε", "not private")) for n in names)
           else " at each training budget")
    return QUESTION.format(data=t.data, eps=eps)
