"""The sanity gate: a generator better than independent marginals on no ranked fidelity metric is not ranked."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .ranking import NO_LEVEL, beats

INDEPENDENT = "independent"  # the floor a generator must beat on at least one fidelity metric
GATE_METRICS = 3  # the fewest ranked fidelity metrics the gate judges on


def sanity_failures(cells: pd.DataFrame, unranked: set[str] | frozenset = frozenset(),
                    levels: dict[str, tuple[float, float]] | None = None,
                    generators: dict[str, str] | None = None) -> dict[str, str]:
    """Generators that beat the independent-marginals reference of their own budget beyond noise on none of the
    fidelity metrics that rank in the table (at least GATE_METRICS of them): model -> reason. Such output (empty,
    constant, noise, one record repeated, seeds that are each garbage of another kind) is listed as failed and not
    ranked, so it never takes a rank from a working model. A tie with the floor is no pass: where independent
    marginals are themselves as detectable as garbage (detection near 1), garbage ties them. Better is the ranks' rule
    (`ranking.beats`): the key by more than 2 sqrt(noise_a^2 + noise_b^2), each the mean's standard error.
    `levels` (`run_levels`) gives each row's budget, `generators` each row's generator (row labels of a sweep carry
    the budget); without them every row shares one budget and its label is its generator."""
    fid = cells[(cells["family"] == "fidelity") & cells["goal"].isin(["max", "min", "target"])
                & ~cells["metric"].isin(list(unranked))]
    budget = lambda m: (levels or {}).get(m, NO_LEVEL)[1]  # noqa: E731
    floors = {}
    for m, g in fid[fid["reference"]].groupby("model"):
        if (generators or {}).get(m, m) == INDEPENDENT:
            g = g.set_index("metric")
            floors.setdefault(budget(m), g[np.isfinite(g["mean"].astype(float))])
    out = {}
    for model, g in fid[~fid["reference"]].groupby("model"):
        floor = floors.get(budget(model))
        if floor is None or len(floor) < GATE_METRICS or (g["n"] == 0).all():  # no value at all: a failure row says why
            continue
        a = g.set_index("metric").reindex(floor.index)
        if not any(_beats_floor(f, a.loc[metric]) for metric, f in floor.iterrows()):
            out[str(model)] = f"not better than independent marginals beyond noise on any of {len(floor)} ranked fidelity metrics"
    return out


def _beats_floor(floor: pd.Series, a: pd.Series) -> bool:
    """a beats the floor on one metric by the ranks' own rule (`beats`: key, ideal, noise; unknown noise counts 0)."""
    pair = lambda col: pd.Series([floor[col], a[col]], index=["floor", "a"], dtype=float)  # noqa: E731
    ideal = floor["ideal"] if np.isfinite(float(floor["ideal"])) else None
    m = beats(pair("mean"), str(floor["goal"]), ideal, pair("noise"))
    return m is not None and "a" in m.index and bool(m.loc["floor", "a"])
