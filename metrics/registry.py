"""The METRICS registry, `register_metric`, and `evaluate()` which turns every failure into a visible row."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ehrbench.data import EHRData

GOALS = ("max", "min", "target", "info")
FAMILIES = ("fidelity", "utility", "privacy", "efficiency")
# the data splits a metric reads, by family (register_metric(splits=...) overrides), each needing MIN_SPLIT_ROWS rows
SPLITS = {"fidelity": ("train",), "utility": ("train", "test"), "privacy": ("train", "holdout"), "efficiency": ()}
MIN_SPLIT_ROWS = 2


class NotApplicable(ValueError):
    """The metric does not apply to this dataset (e.g. continuous-column metrics on all-binary data).

    evaluate() records it as a row with status "n/a: <reason>" and value NaN: visible, but not a failure.
    """


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable[..., float | dict]
    goal: str
    family: str
    version: int = 1
    ideal: float | str | None = None
    splits: tuple[str, ...] = ()
    marginal: bool = False
    reads: str = "all"
    concept: str = ""


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, goal: str, family: str, version: int = 1, ideal: float | str | None = None,
                    splits: tuple[str, ...] | None = None, marginal: bool = False, reads: str = "all",
                    concept: str | None = None) -> Callable:
    """Decorator: register `fn(data, synth, *, seed, **kwargs) -> float | dict` as metric `name`.

    `goal` is "max" or "min", "target" for a score whose ideal lies inside its range (e.g. a code count whose
    ideal is the real count), or "info" for a reference value that does not depend on the synthetic data (e.g.
    trtr_auroc): stored and shown like the others but never ranked, since it cannot tell generators apart and
    ranking it would tie every model and flatten its family's ranks.
    `ideal` (required for "target", optional for "min"/"max") is a number or the name of a key of the metric's
    dict result (a data-dependent ideal such as nzc's real count); every row records it as "ideal". Reports rank
    a target metric by |value - ideal|, and a min (max) metric with an ideal by how far it lies above (below) the
    ideal, clipped at 0: a signed privacy loss whose ideal is 0 ranks a negative value (chance) like 0, never
    better. When the metric returns its standard error as key "se", a deviation within two standard errors of
    the ideal counts as none, so noise near the ideal never outranks other noise near the ideal.
    A dict result must hold "value" (the registered metric); its other keys become extra rows `name.key` with
    goal "info" (shown, never ranked). Bump `version` when the definition changes, so reports never mix two
    definitions in one column. `splits`: the data splits it reads (default: its family's, SPLITS).
    `marginal`: the metric sees each column alone (independent marginals score like real data by definition; the
    calibration ladder, metrics/ladder.py, then only asks resample >= independent). `reads`: the column kinds it
    looks at, "all", "binary" or "continuous" (the ladder does not ask it to see garbage in the other kind).
    `concept`: what it measures, shared by near-duplicates (e.g. prevalence r, rho and MAE: "code prevalence");
    reports average a concept's ranks into one score before averaging concepts into the family (default: name).
    """
    if goal not in GOALS:
        raise ValueError(f"metric '{name}': goal must be one of {', '.join(GOALS)}; got {goal!r}")
    if (goal == "target" and ideal is None) or (goal == "info" and ideal is not None):
        raise ValueError(f"metric '{name}': goal 'target' needs an ideal value and goal 'info' takes none; got goal "
                         f"{goal!r} with ideal {ideal!r}")
    if family not in FAMILIES:
        raise ValueError(f"metric '{name}': family must be one of {', '.join(FAMILIES)}; got {family!r}")

    def wrap(fn: Callable) -> Callable:
        if name in METRICS:
            raise ValueError(f"metric '{name}' is already registered")
        METRICS[name] = MetricSpec(name, fn, goal, family, version, ideal,
                                   splits if splits is not None else SPLITS[family], marginal, reads,
                                   concept or name)
        return fn

    return wrap


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise KeyError(f"unknown metric '{name}'; valid choices: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def check_split(data: EHRData, names: list[str]) -> None:
    """Refuse, before any training, a split that leaves a part some asked-for metric reads with fewer than
    MIN_SPLIT_ROWS rows (one sentence naming the sizes)."""
    sizes = {"train": len(data.train), "holdout": len(data.holdout), "test": len(data.test)}
    for name in names:
        short = [s for s in get_metric(name).splits if sizes[s] < MIN_SPLIT_ROWS]
        if short:
            split = (data.meta.get("split") or {}).get("fractions")
            raise ValueError(f"data '{data.name}' splits into train {sizes['train']:,}, holdout {sizes['holdout']:,} "
                             f"and test {sizes['test']:,} rows{f' (data.split={split})' if split else ''}, but metric "
                             f"'{name}' needs at least {MIN_SPLIT_ROWS} {short[0]} rows; use more patients or another "
                             "data.split")


def _row(spec: MetricSpec, metric: str, goal: str, value: float, seconds: float, status: str,
         ideal: float | None = None) -> dict:
    row = {"metric": metric, "family": spec.family, "goal": goal, "value": value, "seconds": seconds,
           "status": status, "metric_version": spec.version}
    if spec.ideal is not None and metric == spec.name:
        row["ideal"] = ideal
    return row


def _ideal(spec: MetricSpec, out: Mapping[str, Any] | None) -> float | None:
    """The ideal of a target metric: its registered number, or the named key of its dict result."""
    if spec.ideal is None:
        return None
    if isinstance(spec.ideal, str):
        if out is None or spec.ideal not in out:
            return None
        return float(out[spec.ideal])
    return float(spec.ideal)


def evaluate(data: EHRData, synth: np.ndarray, spec: Mapping[str, Mapping[str, Any] | None] | list[str],
             seed: int = 0) -> list[dict]:
    """Run each metric of `spec` (name -> kwargs) on the synthetic matrix and return one row per value.

    An exception in a metric becomes a row with value NaN and status "error: <reason>"; a metric that does not
    apply to the dataset (NotApplicable) a row with status "n/a: <reason>"; nothing is skipped.
    Unknown names raise before anything runs, listing the valid names.
    """
    items = [(n, {}) for n in spec] if isinstance(spec, (list, tuple)) else [(n, dict(kw or {})) for n, kw in spec.items()]
    specs = [(get_metric(n), kw) for n, kw in items]
    rows: list[dict] = []
    for m, kwargs in specs:
        t0 = time.perf_counter()
        try:
            out = m.fn(data, synth, seed=seed, **kwargs)
            seconds = time.perf_counter() - t0
            if isinstance(out, Mapping):
                if "value" not in out:
                    raise KeyError(f"metric '{m.name}' returned a dict without 'value'")
                rows.append(_row(m, m.name, m.goal, float(out["value"]), seconds, "ok", _ideal(m, out)))
                rows += [_row(m, f"{m.name}.{k}", "info", float(v), seconds, "ok")
                         for k, v in out.items() if k != "value"]
            else:
                if isinstance(m.ideal, str):
                    raise TypeError(f"metric '{m.name}' must return a dict with its ideal '{m.ideal}'")
                rows.append(_row(m, m.name, m.goal, float(out), seconds, "ok", _ideal(m, None)))
        except NotApplicable as e:
            rows.append(_row(m, m.name, m.goal, float("nan"), time.perf_counter() - t0, f"n/a: {e}", _ideal(m, None)))
        except Exception as e:  # a failing metric is a visible row, never skipped
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            rows.append(_row(m, m.name, m.goal, float("nan"), time.perf_counter() - t0,
                             f"error: {type(e).__name__}: {reason}", _ideal(m, None)))
    return rows
