"""The sanity gate: a generator worse than independent marginals on every ranked fidelity metric is not ranked."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .ranking import NO_LEVEL

INDEPENDENT = "independent"  # the floor a generator must beat on at least one fidelity metric
GATE_METRICS = 3  # the fewest ranked fidelity metrics the gate judges on


def sanity_failures(cells: pd.DataFrame, unranked: set[str] | frozenset = frozenset(),
                    values: pd.DataFrame | None = None, levels: dict[str, tuple[float, float]] | None = None,
                    generators: dict[str, str] | None = None) -> dict[str, str]:
    """Generators worse than the independent-marginals reference of their own budget beyond noise on every fidelity
    metric that ranks in the table (at least GATE_METRICS of them; a failed or missing value counts as worse), in
    their mean over seeds or in each seed alone: model -> reason. Such output (empty, constant, noise) is listed as
    failed and not ranked, so it never takes a rank from a working model. The per-seed test catches seeds that are
    each garbage of another kind (empty in one, all ones in another), whose spread hides them from the mean's test.
    Noise: 2 sqrt(sd_a^2 / n_a + sd_b^2 / n_b) for the means, 2 sqrt(se_a^2 + sd_b^2 / n_b) for one seed (se_a: the
    run's own `<metric>.se`, else 0). `levels` (`run_levels`) gives each row's budget, `generators` each row's
    generator (row labels of a sweep carry the budget); without them every row shares one budget and its label."""
    fid = cells[(cells["family"] == "fidelity") & cells["goal"].isin(["max", "min", "target"])
                & ~cells["metric"].isin(list(unranked))]
    budget = lambda m: (levels or {}).get(m, NO_LEVEL)[1]  # noqa: E731
    floors = {}
    for m, g in fid[fid["reference"]].groupby("model"):
        if (generators or {}).get(m, m) == INDEPENDENT:
            g = g.set_index("metric")
            floors.setdefault(budget(m), g[np.isfinite(g["mean"].astype(float))])
    ok = values[values["status"] == "ok"] if values is not None else pd.DataFrame(columns=["path", "model", "metric", "value"])
    out = {}
    for model, g in fid[~fid["reference"]].groupby("model"):
        floor = floors.get(budget(model))
        if floor is None or len(floor) < GATE_METRICS or (g["n"] == 0).all():  # no value at all: a failure row says why
            continue
        g = g.set_index("metric").reindex(floor.index)
        spread_b = np.nan_to_num(floor["std"].astype(float)) ** 2 / floor["n"].clip(lower=1)
        spread_a = np.nan_to_num(g["std"].astype(float)) ** 2 / g["n"].clip(lower=1)
        if _worse(floor, g["mean"], 2 * np.sqrt(spread_a + spread_b)).all():
            out[str(model)] = f"worse than independent marginals beyond noise on all {len(floor)} ranked fidelity metrics"
            continue
        mine = ok[ok["model"] == model]
        runs = mine.pivot_table(index="path", columns="metric", values="value", aggfunc="first")
        if runs.empty:
            continue
        se = (mine[mine["metric"].str.endswith(".se")].assign(metric=lambda d: d["metric"].str[:-3])
              .pivot_table(index="path", columns="metric", values="value", aggfunc="first")
              .reindex(index=runs.index, columns=floor.index))
        runs = runs.reindex(columns=floor.index)
        if all(_worse(floor, runs.loc[p], 2 * np.sqrt(np.nan_to_num(se.loc[p].astype(float)) ** 2 + spread_b)).all()
               for p in runs.index):
            out[str(model)] = (f"worse than independent marginals beyond noise on all {len(floor)} ranked fidelity "
                               f"metrics in each of its {len(runs)} seeds")
    return out


def _worse(floor: pd.DataFrame, a: pd.Series, noise: pd.Series) -> np.ndarray:
    """Per metric of `floor` (goal, mean, ideal): a is missing or worse than the floor's mean by more than noise."""
    a, b = a.astype(float).to_numpy(), floor["mean"].astype(float).to_numpy()
    goal, ideal = floor["goal"].to_numpy(), floor["ideal"].astype(float).to_numpy()
    bad = lambda x: np.where(goal == "max", -x, np.where(goal == "min", x, np.abs(x - ideal)))  # noqa: E731
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(a) | (bad(a) - bad(b) > np.asarray(noise, dtype=float))
