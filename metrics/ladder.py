"""The calibration ladder: known synthetic sets every metric must order correctly before it may rank generators."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ehrbench.data import EHRData

from .privacy import _is_copy, _row_bytes
from .registry import evaluate, get_metric

# Known sets. unseen: real test records no metric compares with (each seed halves the test split at random: one
# half is the set, the other the metrics' test split); resample: train records drawn with replacement (verbatim
# copies, as the `real` reference); flip_k: that resample with k % of cells changed (binary cells flipped,
# continuous cells redrawn from the column's train values); independent: each column drawn alone from its train
# marginal; then garbage. Sizes: the checks that involve unseen records are judged, for fidelity and utility
# metrics, on sets as large as the unseen half (so unseen and resample hold equally many records and neither is
# favoured by its size); every other check on sets as large as train, the size a leaderboard run samples (a
# utility model's or an attack's power depends on it). Privacy metrics see unseen records drawn with replacement
# to that size (a repeated non-member reveals nothing about members).
SETS = ("unseen", "resample", "flip_1", "flip_5", "flip_20", "independent",
        "empty", "constant", "noise", "one_record", "all_codes", "invented", "shifted")
GARBAGE = ("empty", "constant", "noise", "one_record", "all_codes", "invented", "shifted")
FAR = ("empty", "noise", "all_codes", "invented", "shifted")  # made without any member record: never a privacy risk,
# even where one equals some patient's record (on Diabetes-130 a few patients have no code)
PARTIAL = {"invented": "binary", "shifted": "continuous"}  # garbage in one column kind only, real in the other
LARGE = ("resample", "independent", "empty", "constant", "noise", "one_record", "all_codes")  # fidelity, utility
FLIPS = {"flip_1": 0.01, "flip_5": 0.05, "flip_20": 0.20}


def build_sets(data: EHRData, unseen: np.ndarray, seed: int) -> dict[str, np.ndarray | str]:
    """The ladder's sets (float32, len(unseen) rows each, `unseen` included as given); a set the data cannot give
    is its one-sentence reason."""
    rng = np.random.default_rng(seed)
    T, n = data.train, len(unseen)
    b, labels = data.binary_mask, np.isin(data.columns, data.label_columns)
    codes = b & ~labels
    p = T.mean(0, dtype=np.float64)
    median = np.median(T, axis=0)

    def redraw(shape: tuple[int, int]) -> np.ndarray:  # every column drawn alone from its train values
        return T[rng.integers(0, len(T), shape), np.arange(shape[1])]

    resample = T[rng.integers(0, len(T), n)]
    sets: dict[str, np.ndarray | str] = {"unseen": unseen, "resample": resample}
    for name, k in FLIPS.items():
        X, hit = resample.copy(), rng.random(resample.shape) < k
        X[hit & b] = 1 - X[hit & b]
        X[hit & ~b] = redraw(X.shape)[hit & ~b]
        sets[name] = X
    sets["independent"] = redraw((n, T.shape[1]))
    base = np.where(b, 0.0, median)
    sets["empty"] = np.tile(base, (n, 1))
    sets["constant"] = np.tile(np.where(b, p >= 0.5, median), (n, 1))
    lo, hi = T.min(0), T.max(0)
    sets["noise"] = np.where(b, rng.random((n, T.shape[1])) < 0.5, lo + (hi - lo) * rng.random((n, T.shape[1])))
    sets["one_record"] = np.tile(T[rng.integers(len(T))], (n, 1))
    sets["all_codes"] = np.tile(np.where(codes, 1.0, base), (n, 1))
    # invented: each record keeps its number of codes, drawn among the rarest half of the vocabulary instead
    rare = np.flatnonzero(codes)[np.argsort(p[codes], kind="stable")[: max(1, int(codes.sum()) // 2)]]
    X = unseen.copy()
    X[:, codes] = 0
    counts = np.minimum(unseen[:, codes].sum(1).astype(int), len(rare))
    keys = rng.random((n, len(rare)))  # each record's codes: its `counts` smallest keys
    kth = np.take_along_axis(np.sort(keys, axis=1), np.maximum(counts - 1, 0)[:, None], axis=1)
    X[:, rare] = (keys <= kth) & (counts[:, None] > 0)
    sets["invented"] = X
    if b.all():
        sets["shifted"] = "the dataset has no continuous columns"
    else:
        sets["shifted"] = np.where(b, unseen, unseen + 3 * T.std(0))
    return {k: v if isinstance(v, str) else np.asarray(v, dtype=np.float32) for k, v in sets.items()}


def checks(name: str) -> list[tuple[str, str, str | None]]:
    """The orderings metric `name` must reproduce: (kind, set a, set b). "better": a scores better than b beyond
    noise; "not_worse": a is not worse than b beyond noise; "no_risk": a shows no risk (not above the metric's no-risk
    value, its ideal or 0, beyond noise). Fidelity and utility: unseen >= resample > independent >= every garbage
    set, and unseen > every garbage set (a marginal metric only needs resample >= independent: it cannot see joint
    structure by definition; independent >= garbage, not >, because independent columns carry no utility either,
    so both may sit at chance; a set garbled in one column kind only, `invented` or `shifted`, keeps the other kind
    real, so it is only asked to lose to unseen, and only by a fidelity metric that reads that kind: a downstream
    task may rest on the intact kind alone). Privacy:
    risk never grows with more flipping and copies are riskier than 20 % flips (resample >= flip_1 >= flip_5 >=
    flip_20, resample > flip_20: a record with 1 % of its cells changed is a near-copy, as risky as a copy, and on
    117 columns that is one cell); unseen and far-away garbage show none."""
    spec = get_metric(name)
    if spec.goal == "info":  # does not depend on the synthetic data: nothing to order
        return []
    if spec.family == "privacy":
        return [("not_worse", "flip_1", "resample"), ("not_worse", "flip_5", "flip_1"),
                ("not_worse", "flip_20", "flip_5"), ("better", "flip_20", "resample"),
                ("no_risk", "unseen", None), *[("no_risk", g, None) for g in FAR]]
    if spec.family in ("fidelity", "utility"):
        return [("not_worse", "unseen", "resample"),
                ("not_worse" if spec.marginal else "better", "resample", "independent"),
                *[("not_worse", "independent", g) for g in GARBAGE if g not in PARTIAL],
                *[("better", "unseen", g) for g in GARBAGE if g not in PARTIAL or spec.family != "utility"]]
    return []


def copy_share(data: EHRData, X: np.ndarray) -> float:
    """Share of X's records identical to a training record (written beside each score: on Diabetes-130 a few
    patients have no code, so every empty record equals one of theirs)."""
    return float(_is_copy(_row_bytes(data, X), _row_bytes(data, data.train)).mean())


def score_sets(data: EHRData, metrics: Mapping[str, Mapping[str, Any] | None], seeds: int = 3,
               seed: int = 0) -> pd.DataFrame:
    """Every metric on every set, once per seed (the test split halved anew, the sets drawn anew, the metrics'
    subsamples reseeded): one row per (set, size, seed, metric) with n (the set's records), value, reported se,
    goal, ideal, status, the metric's version and copies (copy_share); size "small" (the unseen half's) or "large"
    (train's)."""
    private = {m: kw for m, kw in metrics.items() if get_metric(m).family == "privacy"}
    others = {m: kw for m, kw in metrics.items() if m not in private}
    groups = [(others, "small", SETS), (others, "large", LARGE), (private, "large", SETS)]
    rows = []
    for s in range(seeds):
        rng = np.random.default_rng([seed, s])
        order = rng.permutation(len(data.test))
        pool, rest = data.test[np.sort(order[: len(order) // 2])], data.test[np.sort(order[len(order) // 2:])]
        scored = replace(data, test=rest)  # the metrics' test split never holds an unseen record
        large = pool[rng.integers(0, len(pool), len(data.train))]
        for group, size, names in groups:
            if not group:
                continue
            sets = build_sets(scored, pool if size == "small" else large, seed * 1000 + s)
            for set_name in names:
                X = sets[set_name]
                if isinstance(X, str):
                    rows += [{"set": set_name, "size": size, "seed": s, "metric": m, "status": f"skipped: {X}"}
                             for m in group]
                    continue
                copies = copy_share(scored, X)
                out = evaluate(scored, X, group, seed=seed + s)
                se = {r["metric"][: -len(".se")]: r["value"] for r in out if r["metric"].endswith(".se")}
                rows += [{"set": set_name, "size": size, "seed": s, "metric": r["metric"],
                          "version": r["metric_version"], "n": len(X), "value": r["value"], "se": se.get(r["metric"]),
                          "goal": r["goal"], "ideal": r.get("ideal"), "status": r["status"], "copies": copies}
                         for r in out if r["metric"] in group]
    return pd.DataFrame(rows)


def _summary(rows: pd.DataFrame) -> dict[str, dict]:
    """Per (set, size): mean value, noise of one value (the larger of the sd over seeds and the reported se), seeds,
    ideal and status (the first non-ok status, if any)."""
    out = {}
    for set_name, g in rows.groupby(["set", "size"], sort=False):
        ok = g[g["status"] == "ok"]
        bad = g.loc[g["status"] != "ok", "status"]
        sd = float(ok["value"].std(ddof=1)) if len(ok) > 1 else 0.0
        se = float(np.sqrt(np.nanmean(ok["se"].astype(float) ** 2))) if ok["se"].notna().any() else 0.0
        out[set_name] = {"mean": float(ok["value"].mean()) if len(ok) else math.nan,
                         "noise": max(sd, se), "n": len(ok), "ideal": ok["ideal"].dropna().mean() if "ideal" in ok and len(ok) else None,
                         "status": bad.iloc[0] if len(bad) else "ok"}
    return out


def _badness(goal: str, value: float, ideal: float | None) -> float:
    """Lower is better on every metric: -value for max, value for min, |value - ideal| for target."""
    if goal == "max":
        return -value
    if goal == "target":
        return abs(value - ideal)
    return value


def with_sizes(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows written before sets had two sizes: fidelity and utility rows were "small", privacy rows "large"."""
    if "size" in rows:
        return rows
    return rows.assign(size=["large" if get_metric(m).family == "privacy" else "small" for m in rows["metric"]])


def judge(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, check): passed True/False/None (skipped) and the reason, from score_sets' rows.
    Noise: s = the noise of one value of a set (sd over seeds or the metric's own se, the larger). "better": the
    means differ the right way by more than 2 sqrt(s_a^2 / n_a + s_b^2 / n_b) (n seeds each); "not_worse" and
    "no_risk" forgive up to two standard errors of one run, 2 sqrt(s_a^2 + s_b^2) and 2 s_a, as a leaderboard's
    ties do. A set the metric cannot score fails the check when it is real data (unseen, resample, flips,
    independent) and passes when it is garbage (a failing metric takes the last places in a leaderboard)."""
    out = []
    for metric, g in with_sizes(rows).groupby("metric", sort=False):
        spec, summ = get_metric(metric), _summary(g)
        goal = spec.goal
        statuses = {s["status"] for s in summ.values()}
        na = next((s for s in statuses if s.startswith("n/a")), None)
        if not checks(metric):
            out.append({"metric": metric, "family": spec.family, "check": "", "passed": None,
                        "reason": f"goal {goal}: nothing to order"})
        for kind, a, b in checks(metric):
            label = f"{a} {'>' if kind == 'better' else '>='} {b}" if b else f"{a}: no risk"
            real_vs = "unseen" in (a, b) or (b or a) in PARTIAL  # judged where unseen and resample are equally large
            size = "small" if real_vs and spec.family != "privacy" else "large"
            if (a, size) not in summ:  # rows from a run without large fidelity sets
                size = "small"
            res = _check(kind, summ.get((a, size)), summ.get((b, size)) if b else None, goal, a, b)
            partial = PARTIAL.get(b or a)
            if partial and spec.reads not in ("all", partial):
                res = (None, f"skipped: {b or a} changes {partial} columns only, which {metric} does not read")
            if na:
                res = (None, na)
            out.append({"metric": metric, "family": spec.family, "check": label, "passed": res[0], "reason": res[1]})
    return pd.DataFrame(out, columns=["metric", "family", "check", "passed", "reason"])


def _check(kind: str, sa: dict | None, sb: dict | None, goal: str, a: str, b: str | None) -> tuple[bool | None, str]:
    for name, s in ((a, sa), (b, sb)):
        if name is None:
            continue
        if s is None or s["status"].startswith("skipped"):
            return None, (s or {}).get("status", f"no {name} set")
        if s["status"] != "ok":
            return (True, f"{name} not scorable ({s['status']})") if name in GARBAGE else \
                (False, f"{name} not scorable ({s['status']})")
    if kind == "no_risk":
        ref = sa["ideal"] if sa["ideal"] is not None and not pd.isna(sa["ideal"]) else 0.0
        tol = 2 * sa["noise"]
        ok = sa["mean"] <= ref + tol
        return ok, f"{a} {sa['mean']:.4g} {'<=' if ok else '>'} no-risk {ref:g} + 2 se {tol:.2g}"
    ba, bb = (_badness(goal, s["mean"], s["ideal"]) for s in (sa, sb))
    if kind == "better":
        tol = 2 * math.sqrt(sa["noise"] ** 2 / sa["n"] + sb["noise"] ** 2 / sb["n"])
        ok = bb - ba > tol
    else:
        tol = 2 * math.sqrt(sa["noise"] ** 2 + sb["noise"] ** 2)
        ok = bb - ba >= -tol
    return ok, f"{a} {sa['mean']:.4g} vs {b} {sb['mean']:.4g} (2 se {tol:.2g})"


def verdict(judged: pd.DataFrame) -> pd.DataFrame:
    """Per metric: checks passed / run, the first failure, and whether it may rank ("pass") on this dataset."""
    rows = []
    for metric, g in judged.groupby("metric", sort=False):
        run = g[g["passed"].notna()]
        failed = run[run["passed"] == False]  # noqa: E712 (a column of True/False/None)
        status = "n/a" if run.empty else ("pass" if failed.empty else "fail")
        first = failed.iloc[0] if len(failed) else None
        rows.append({"metric": metric, "family": g["family"].iloc[0], "verdict": status,
                     "passed": int((run["passed"] == True).sum()), "checks": len(run),  # noqa: E712
                     "first_failure": "" if first is None else f"{first['check']}: {first['reason']}",
                     "failed_checks": "; ".join(failed["check"])})
    return pd.DataFrame(rows)
