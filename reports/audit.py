"""Privacy audits: a private run's membership-inference advantage and canary epsilon lower bound against its (epsilon, delta)."""
from __future__ import annotations

import math

import pandas as pd

from ehrbench.metrics.privacy import mia_advantage_bound

AUDIT_COLUMNS = ["path", "model", "seed", "epsilon", "delta", "advantage", "bound", "above"]
METRIC = "mia_auc"
CANARY = "canary_epsilon"  # metrics/canary.py: the one-run canary audit's empirical epsilon lower bound
CANARY_COLUMNS = ["path", "model", "seed", "epsilon", "lower_bound", "above"]


def _number(v: object) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _delta(config: dict | None) -> float:
    trainer = (config or {}).get("trainer")
    dp = trainer.get("dp") if isinstance(trainer, dict) else None
    return _number(dp.get("delta")) if isinstance(dp, dict) else math.nan


def audit_rows(runs: pd.DataFrame, results: pd.DataFrame, configs: dict[str, dict]) -> pd.DataFrame:
    """One row per complete private run (finite spent epsilon, a recorded delta) with an ok mia_auc value: its
    advantage (2 (AUC - 0.5); 2 |AUC - 0.5| in mia_auc version 1), the bound its spent (epsilon, delta) puts on any
    membership test, and whether the advantage is above it. The bound holds for the attack's expected advantage; the measured one carries the
    attack's sampling noise (about 1/sqrt(members) at the default 5,000), which only matters when the bound is
    near 0 (epsilon well below 0.1)."""
    ok = results[(results["metric"] == METRIC) & (results["status"] == "ok")].drop_duplicates("path", keep="last")
    adv = ok.set_index("path")["value"]
    rows = []
    for r in runs[runs["ok"].astype(bool)].to_dict("records"):
        eps, delta = _number(r.get("epsilon")), _delta(configs.get(r["path"]))
        if not (math.isfinite(eps) and math.isfinite(delta) and r["path"] in adv.index):
            continue
        bound = mia_advantage_bound(eps, delta)
        rows.append({"path": r["path"], "model": r["model"], "seed": r["seed"], "epsilon": eps, "delta": delta,
                     "advantage": float(adv[r["path"]]), "bound": bound, "above": float(adv[r["path"]]) > bound})
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


def audit_reason(row: dict) -> str:
    return (f"privacy audit: the membership-inference advantage {row['advantage']:.3g} is above the "
            f"{row['bound']:.3g} that (epsilon {row['epsilon']:.3g}, delta {row['delta']:g}) allows any attack; "
            "investigate (a privacy bug, or the attack's sampling noise where the bound is near 0)")


def audit_note(rows: pd.DataFrame) -> str | None:
    """One sentence for a table with private runs: how many, the largest advantage beside its bound, and the runs
    above their bound (each also a failure row)."""
    if rows.empty:
        return None
    worst = rows.loc[(rows["advantage"] / rows["bound"].clip(lower=1e-12)).idxmax()]
    above = rows[rows["above"]]
    verdict = ("none is above the advantage its spent (ε, δ) allows" if above.empty else
               f"{len(above)} above it ({', '.join(sorted(above['path']))}): see the failures")
    return (f"privacy audit (membership inference against (ε, δ)): {len(rows)} private run(s); the closest to its "
            f"bound is {worst['model']} seed {worst['seed']}, advantage {worst['advantage']:.3g} against "
            f"{worst['bound']:.3g} at ε {worst['epsilon']:.3g}; {verdict}")


def canary_rows(runs: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """One row per complete run with a canary audit: its accounted epsilon (inf when not private), the audit's
    empirical lower bound and whether the bound is above the accounted epsilon (the run is not what it claims)."""
    ok = results[(results["metric"] == CANARY) & (results["status"] == "ok")].drop_duplicates("path", keep="last")
    lb = ok.set_index("path")["value"]
    rows = []
    for r in runs[runs["ok"].astype(bool) & runs["path"].isin(lb.index)].to_dict("records"):
        eps = _number(r.get("epsilon"))
        eps = eps if math.isfinite(eps) else math.inf
        rows.append({"path": r["path"], "model": r["model"], "seed": r["seed"], "epsilon": eps,
                     "lower_bound": float(lb[r["path"]]), "above": float(lb[r["path"]]) > eps})
    return pd.DataFrame(rows, columns=CANARY_COLUMNS)


def canary_reason(row: dict) -> str:
    return (f"canary audit: the empirical epsilon lower bound {row['lower_bound']:.3g} (95 % confidence) is above the "
            f"accounted epsilon {row['epsilon']:.3g}; the run is not as private as it reports (a privacy bug)")


def canary_note(rows: pd.DataFrame) -> str | None:
    """One sentence: how many runs were audited, the largest lower bound, and the runs above their accounted
    epsilon (each also a failure row); the table section "Privacy audit (canaries)" lists every run."""
    if rows.empty:
        return None
    top = rows.loc[rows["lower_bound"].idxmax()]
    above = rows[rows["above"]]
    verdict = ("no private run is above its accounted ε" if above.empty else
               f"{len(above)} above it ({', '.join(sorted(above['path']))}): see the failures")
    return (f"canary audit (one training run, Steinke et al. 2023; empirical ε lower bounds at 95 %): {len(rows)} "
            f"run(s); the largest bound is {top['model']} seed {top['seed']}, ε ≥ {top['lower_bound']:.2f}; {verdict}")


def canary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per row label: the accounted epsilon, each seed's empirical lower bound and whether any is above."""
    if rows.empty:
        return pd.DataFrame()
    g = rows.sort_values("seed").groupby("model", sort=False)
    return pd.DataFrame({
        "accounted ε": g["epsilon"].max().map(lambda e: "∞ (not private)" if math.isinf(e) else f"{e:.3g}"),
        "empirical ε lower bound (per seed)": g["lower_bound"].apply(lambda v: " / ".join(f"{x:.2f}" for x in v)),
        "above the accounted ε": g["above"].any().map({True: "**yes**", False: "no"})}).rename_axis("model")
