"""Leaderboard tables: mean ± std over seeds, ranks per metric and family, use-case profiles, efficiency columns."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ehrbench.metrics.registry import METRICS

from .audit import audit_note, audit_rows, canary_note, canary_rows
from .gate import sanity_failures
from .load import RunSet, settings_labels
from .ranking import NO_LEVEL, best_mask, level_names, rank_metric, run_levels, sig12

FAMILY_ORDER = ("fidelity", "utility", "privacy", "efficiency")
RANK_FAMILIES = ("fidelity", "utility", "privacy")
# Use-case weight profiles (after Yan et al., Nat. Commun. 2022, who weight per-metric ranks by use case). Deviation:
# our weights act on the three family mean ranks, so a family with many metrics does not dominate a profile.
PROFILES: dict[str, dict[str, float]] = {
    "balanced": {"fidelity": 1 / 3, "utility": 1 / 3, "privacy": 1 / 3},
    "privacy_first": {"fidelity": 0.2, "utility": 0.2, "privacy": 0.6},
    "utility_first": {"fidelity": 0.2, "utility": 0.6, "privacy": 0.2},
}
EFFICIENCY = ("fit_seconds", "sample_seconds", "sample_seconds_per_1000", "peak_memory_mb", "n_params", "train_flops",
              "sample_flops_per_1000", "total_flops", "fraction_of_paper", "epsilon")  # epsilon: spent by a private run (the accountant's), NaN = not private, shown as "—"
ARROWS = {"max": "↑", "min": "↓", "target": "◎"}  # a metric's goal as shown beside its name
REFERENCE_MODELS = ("real", "independent")


@dataclass
class Table:
    """One leaderboard: one tag, one dataset config and one version of each metric."""

    tag: str
    data: str
    label: str                      # "tag / data" (plus a suffix when split by data config or metric version)
    cells: pd.DataFrame             # model, metric, family, goal, metric_version, mean, std, n, n_error, rank, best
    summary: pd.DataFrame           # index model: mean_rank, rank_<family>, profile_<p>, rank_<p>, runs, efficiency
    values: pd.DataFrame            # per-run values behind the cells (path, model, seed, metric, value, status)
    runs: pd.DataFrame              # the run rows of this table
    notes: list[str] = field(default_factory=list)
    ladder: pd.DataFrame = field(default_factory=pd.DataFrame)  # ladder_frame: each ranked metric's verdict here

    @property
    def models(self) -> list[str]:
        """Generators in leaderboard order, then the references (unranked)."""
        return list(self.summary.index)

    @property
    def generators(self) -> dict[str, str]:
        """Row label -> its generator's name (a row of private runs or of other settings carries a suffix)."""
        return generator_names(self.runs)

    @property
    def references(self) -> list[str]:
        return [m for m in self.summary.index if self.summary.loc[m, "reference"]]

    def metrics(self, goal: str | None = None) -> list[str]:
        """Metric names in display order (family, then name); goal="ranked" keeps max/min/target metrics only."""
        c = self.cells.drop_duplicates("metric")
        if goal == "ranked":
            c = c[c["goal"].isin(["max", "min", "target"])]
        elif goal is not None:
            c = c[c["goal"] == goal]
        order = {f: i for i, f in enumerate(FAMILY_ORDER)}
        c = c.assign(_f=c["family"].map(order).fillna(len(order)))
        return list(c.sort_values(["_f", "family", "metric"])["metric"])

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.label).strip("_").lower()


def aggregate_cells(values: pd.DataFrame, models: list[str], references: list[str] | tuple = (),
                    unranked: set[str] | frozenset = frozenset(), failed: set[str] | frozenset = frozenset(),
                    levels: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """mean, sample std (ddof 1; NaN for one seed), n (usable values) and n_error per (model, metric), then ranks.

    `references` (e.g. real, independent) get values but no rank and no best mark: they are reference points,
    and the ranks compare the other models (the generators) among themselves. Metrics with an ideal also get
    `ideal` (mean of the rows' ideals) and `tol` = 2 sqrt(sum se_i^2) / n from their `<metric>.se` rows.
    Metrics in `unranked` (failed the dataset's calibration ladder) keep their values but get no rank and no mark;
    so do the models in `failed` (failed the sanity gate, `sanity_failures`), which are not counted in others' ranks.
    `levels` (model -> (target epsilon, budget), `run_levels`): ranks compare models of one level only (default: one).
    """
    ok = values[values["status"] == "ok"]
    g = ok.groupby(["model", "metric"])["value"]
    stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    ideal = ok.groupby(["model", "metric"])["ideal"].mean() if "ideal" in ok else pd.Series(dtype=float)
    se = ok[ok["metric"].str.endswith(".se")].assign(metric=lambda d: d["metric"].str[:-3])
    tol = (se.assign(v2=se["value"] ** 2).groupby(["model", "metric"])["v2"].sum() ** 0.5
           / se.groupby(["model", "metric"])["value"].count() * 2.0)
    meta = values.groupby("metric").agg(family=("family", "first"), goal=("goal", "first"),
                                        metric_version=("metric_version", "first"))
    errors = values[values["status"] != "ok"].groupby(["model", "metric"]).size().rename("n_error")
    full = pd.MultiIndex.from_product([models, sorted(meta.index)], names=["model", "metric"])
    cells = full.to_frame(index=False)  # reindex instead of join: pandas 3 joins of empty string columns fail
    for col in ("mean", "std", "n"):
        cells[col] = stats[col].reindex(full).to_numpy()
    cells["ideal"] = ideal.reindex(full).to_numpy(dtype=float)
    cells["tol"] = tol.reindex(full).to_numpy(dtype=float)
    cells["n_error"] = errors.reindex(full).to_numpy()
    for col in ("family", "goal", "metric_version"):
        cells[col] = meta[col].reindex(cells["metric"]).to_numpy()
    cells["n"] = cells["n"].fillna(0).astype(int)
    cells["n_error"] = cells["n_error"].fillna(0).astype(int)
    cells["reference"] = cells["model"].isin(list(references))
    cells["failed"] = cells["model"].isin(list(failed))
    seeds = (cells["std"] ** 2 / cells["n"]).where(cells["n"] >= 2)
    cells["noise"] = np.sqrt(np.fmax(seeds, (cells["tol"] / 2) ** 2))  # the mean's standard error; NaN: unknown
    cells["concept"] = [concept_of(m) for m in cells["metric"]]
    cells["rank"], cells["best"], cells["no_se"] = np.nan, False, False
    cells["_level"] = [(levels or {}).get(m, NO_LEVEL) for m in cells["model"]]  # ranked within one level
    ranked = ~cells["reference"] & ~cells["failed"] & ~cells["metric"].isin(list(unranked))
    for (metric, _), idx in cells[ranked].groupby(["metric", "_level"]).groups.items():
        sub = cells.loc[idx].set_index("model")
        goal = sub["goal"].iloc[0]
        if goal in ("max", "min", "target"):  # one seed and no "se" rows: that cell's noise is unknown, no rank
            unknown = (sub["mean"].notna() & sub["noise"].isna()).to_numpy()
            cells.loc[idx[unknown], "no_se"] = True
            idx, sub = idx[~unknown], sub[~unknown]
            if sub.empty:
                continue
        ideal_m = sub["ideal"] if sub["ideal"].notna().any() else None
        if ideal_m is not None:  # a model whose rows lack the ideal (failed) borrows the others' (same data)
            ideal_m = ideal_m.fillna(ideal_m.mean())
        cells.loc[idx, "rank"] = rank_metric(sub["mean"], goal, ideal_m, sub["noise"]).to_numpy()
        cells.loc[idx, "best"] = best_mask(sub["mean"], goal, ideal_m, sub["noise"]).to_numpy()
    return cells.drop(columns="_level")


def concept_of(metric: str) -> str:
    """The registered metric's concept (near-duplicates share one); an unregistered metric is its own."""
    spec = METRICS.get(metric)
    return spec.concept if spec is not None else metric


def generator_names(runs: pd.DataFrame) -> dict[str, str]:
    """Row label -> its generator's name (a row of private runs, of other settings or of a budget carries a suffix)."""
    name = runs["generator"] if "generator" in runs else runs["model"]
    return dict(zip(runs["model"], name.fillna(runs["model"])))


def reference_models(runs: pd.DataFrame) -> list[str]:
    """Models whose runs say `reference: true` (older runs without the key: the built-in real and independent)."""
    if runs.empty:
        return []
    flag = runs["reference"] if "reference" in runs else pd.Series(None, index=runs.index)
    names = runs["generator"] if "generator" in runs else runs["model"]
    is_ref = [bool(f) if isinstance(f, (bool, np.bool_)) else (str(m) in REFERENCE_MODELS) for f, m in zip(flag, names)]
    return sorted(set(runs.loc[is_ref, "model"]))


def summarise(cells: pd.DataFrame, runs: pd.DataFrame, models: list[str],
              profiles: dict[str, dict[str, float]] = PROFILES, failed: dict[str, str] | None = None) -> pd.DataFrame:
    """Per model: mean rank overall and per family, profile scores and ranks, run counts and efficiency means.

    Generators come first in mean-rank order, then those that failed the sanity gate (`failed`: model -> reason,
    column "failed"), then the references (cells["reference"]); the last two have no ranks.
    """
    ranked = cells.dropna(subset=["rank"])
    out = pd.DataFrame(index=pd.Index(models, name="model"))
    lv = run_levels(runs)
    level = pd.Series([lv.get(m, NO_LEVEL) for m in models], index=out.index, dtype=object)
    refs = set(cells.loc[cells["reference"], "model"]) if "reference" in cells else set()
    out["reference"] = [m in refs for m in models]
    out["failed"] = [(failed or {}).get(m, "") for m in models]
    concepts = ranked.groupby(["model", "family", "concept"])["rank"].mean()  # near-duplicates count once
    fam = concepts.groupby(["model", "family"]).mean().unstack("family")
    for f in RANK_FAMILIES:
        out[f"rank_{f}"] = fam[f] if f in fam else np.nan
    out["mean_rank"] = out[[f"rank_{f}" for f in RANK_FAMILIES]].mean(axis=1)  # families weigh equally
    for name, weights in profiles.items():
        w = pd.Series({f: weights.get(f, 0.0) for f in RANK_FAMILIES})
        R = out[[f"rank_{f}" for f in RANK_FAMILIES]].set_axis(list(RANK_FAMILIES), axis=1)
        present = R.notna().mul(w, axis=1)
        score = R.fillna(0).mul(w, axis=1).sum(axis=1) / present.sum(axis=1).replace(0, np.nan)
        out[f"profile_{name}"] = score
        out[f"rank_{name}"] = sig12(score).groupby(level).rank(method="average")
    ok = runs[runs["ok"]]
    out["runs_ok"] = ok.groupby("model").size().reindex(models).fillna(0).astype(int)
    out["runs_total"] = runs.groupby("model").size().reindex(models).fillna(0).astype(int)
    out["seeds"] = ok.groupby("model")["seed"].apply(lambda s: ",".join(str(int(x)) for x in sorted(s)))
    for col in EFFICIENCY:
        vals = ok[col] if col in ok else pd.Series(np.nan, index=ok.index)
        out[col] = pd.to_numeric(vals, errors="coerce").groupby(ok["model"]).mean()
    out["device"] = ok.groupby("model")["device"].apply(lambda s: ",".join(sorted({str(x) for x in s.dropna()})))
    for col in ("budget", "budget_steps"):  # the budget as run (one value when every seed ran the same)
        vals = ok[col] if col in ok else pd.Series(None, index=ok.index)
        out[col] = vals.groupby(ok["model"]).apply(lambda s: " | ".join(dict.fromkeys(str(x) for x in s.dropna())))
    order = (out.assign(_r=sig12(out["mean_rank"]).fillna(np.inf), _level=level, _failed=out["failed"] != "")
             .sort_values(["reference", "_failed", "_level", "_r"], kind="stable"))
    return out.loc[order.index]


def _version_partitions(res: pd.DataFrame, runs: pd.DataFrame) -> list[tuple[str, list[str], str | None]]:
    """Split a group's run paths so no metric appears with two versions in one table: [(suffix, paths, note)]."""
    versions = res.groupby("metric")["metric_version"].nunique()
    clash = sorted(versions[versions > 1].index)
    if not clash:
        return [("", list(runs["path"]), None)]
    sig = (res[res["metric"].isin(clash)].drop_duplicates(["path", "metric"])
           .assign(tag=lambda d: d["metric"] + " v" + d["metric_version"].astype(str))
           .groupby("path")["tag"].apply(lambda s: ", ".join(sorted(s))))
    unversioned = [p for p in runs["path"] if p not in sig.index]  # failed runs: shown as holes in every part
    note = (f"metric versions differ between runs ({', '.join(clash)}); the runs are split into one table per "
            f"version so no column mixes two definitions")
    return [(f" [{s}]", sorted(sig.index[sig == s]) + unversioned, note) for s in sorted(sig.unique())]


def build_tables(rs: RunSet, profiles: dict[str, dict[str, float]] = PROFILES,
                 verdicts: pd.DataFrame | None = None) -> list[Table]:
    """One Table per (tag, dataset config, metric-version set), in sorted order; within a table one row per
    (model, settings): runs of one model whose settings (load.settings: the config minus seed and run-only keys)
    differ become separate rows labelled by what differs, e.g. "vae [model.lr=0.0001]". `verdicts`
    (reports.calibrate.load_verdicts): a metric that failed the ladder of the table's data config at the table's
    metric version is shown but not ranked, with a note giving its first failed check."""
    tables: list[Table] = []
    runs = rs.runs.assign(tag=rs.runs["tag"].fillna("?"), data=rs.runs["data"].fillna("?"),
                          model=rs.runs["model"].fillna("?"))
    for (tag, data), grp in runs.groupby(["tag", "data"], sort=True):
        keys = sorted(set(grp["data_key"]) - {"unknown"}) or ["unknown"]
        for key in keys:  # a run whose config could not be read (a failure) is shown as a hole in each table
            g = grp[grp["data_key"].isin([key, "unknown"])]
            labels, settings_notes = settings_labels(g, rs.configs)  # one row per (model, settings)
            g = g.assign(model=g["path"].map(labels))
            res = rs.results[rs.results["path"].isin(g["path"])]
            res = res.assign(model=res["path"].map(labels))
            base = f"{tag} / {data}" + (f" [data config {key}]" if len(keys) > 1 else "")
            for suffix, paths, note in _version_partitions(res, g):
                t_runs = g[g["path"].isin(paths)]
                values = res[res["path"].isin(paths)]
                models = sorted(t_runs["model"].unique())
                ladder = ladder_frame(verdicts, key, values)
                bad_metrics = dict(ladder.loc[ladder["verdict"] == "fail", ["metric", "first failure"]].values)
                levels = run_levels(t_runs)
                cells = aggregate_cells(values, models, reference_models(t_runs), set(bad_metrics), levels=levels)
                gate = sanity_failures(cells, set(bad_metrics), levels, generator_names(t_runs))
                done = set(t_runs.loc[t_runs["ok"].astype(bool), "model"])
                unfinished = {m: "no complete run (" + ", ".join(sorted(set(t_runs.loc[t_runs["model"] == m, "status"]
                                                                            .astype(str).str.split(":").str[0]))) + ")"
                              for m in models if m not in done}
                gate = {**gate, **unfinished}
                if gate:
                    cells = aggregate_cells(values, models, reference_models(t_runs), set(bad_metrics), set(gate),
                                            levels)
                notes = ([note] if note else []) + settings_notes
                if bad_metrics:
                    notes.append("not ranked here: failed the calibration ladder of this data config (python -m "
                                 "reports --calibrate): " + "; ".join(f"{m} ({why})" for m, why in bad_metrics.items()))
                no_se = cells[cells["no_se"]].groupby("metric")["model"].apply(lambda m: ", ".join(sorted(m)))
                if len(no_se):
                    notes.append("not ranked here: no standard error (a single seed, and the metric reports none), "
                                 "so a difference cannot be told from noise: "
                                 + "; ".join(f"{k} ({v})" for k, v in no_se.items()))
                insane = {m: why for m, why in gate.items() if m not in unfinished}
                if insane:
                    notes.append("failed the sanity gate, not ranked: " + "; ".join(f"{m} ({why})" for m, why in insane.items()))
                if unfinished:
                    notes.append("listed, not ranked: " + "; ".join(f"{m} ({why})" for m, why in unfinished.items()))
                refs = set(reference_models(t_runs))
                if len([m for m in models if m not in refs and m not in gate]) == 1:
                    notes.append("one generator only: there is nothing to rank it against, so its ranks are 1 and its "
                                 "cells bold by construction; compare it with the references' values")
                names = level_names(t_runs)
                if len(names) > 1:
                    notes.append("ranks, best marks and profile ranks compare generators at the same target ε and "
                                 "training budget only: " + "; ".join(names[k] for k in sorted(names))
                                 + " are ranked separately (rows ordered by level, then mean rank)")
                notes += [n for n in (audit_note(audit_rows(t_runs, values, rs.configs)),
                                      canary_note(canary_rows(t_runs, values))) if n]
                if len(keys) > 1:
                    notes.append(f"runs of {tag} / {data} use {len(keys)} different data configs; each has its own table")
                tables.append(Table(str(tag), str(data), base + suffix, cells,
                                    summarise(cells, t_runs, models, profiles, gate),
                                    values[["path", "model", "seed", "metric", "value", "status"]], t_runs, notes,
                                    ladder))
    return tables


def ladder_frame(verdicts: pd.DataFrame | None, key: str, values: pd.DataFrame) -> pd.DataFrame:
    """The calibration ladder's verdict on this data config for each ranked metric of the table, at its version:
    metric, version, verdict ("pass", "fail" or "no ladder": none run for this data config and version), checks
    passed / run, and the first failed check."""
    ranked = values[values["goal"].isin(["max", "min", "target"])] if "goal" in values else values.iloc[0:0]
    metrics = ranked.drop_duplicates("metric").set_index("metric")["metric_version"].sort_index()
    v = (verdicts[verdicts["data_key"].astype(str) == str(key)] if verdicts is not None and not verdicts.empty
         else pd.DataFrame(columns=["metric", "metric_version"]))
    found = {(r.metric, int(r.metric_version)): r for r in v.itertuples()}
    rows = []
    for metric, version in metrics.items():
        r = found.get((metric, int(version)))
        rows.append({"metric": metric, "version": int(version), "verdict": r.verdict if r else "no ladder",
                     "checks": f"{r.passed:.0f}/{r.checks:.0f}" if r and pd.notna(r.checks) else "—",
                     "first failure": (r.first_failure if r and isinstance(r.first_failure, str) else "")})
    return pd.DataFrame(rows, columns=["metric", "version", "verdict", "checks", "first failure"])


def parse_profile(text: str) -> tuple[str, dict[str, float]]:
    """Parse a CLI profile `name=fidelity:0.2,utility:0.6,privacy:0.2` (weights need not sum to 1)."""
    name, sep, body = text.partition("=")
    try:
        weights = {f.strip(): float(w) for f, w in (item.split(":") for item in body.split(","))}
    except ValueError:
        weights = {}
    if not sep or not name or not weights or set(weights) - set(RANK_FAMILIES) or min(weights.values()) < 0:
        raise ValueError(f"profile {text!r} must look like name=fidelity:0.2,utility:0.6,privacy:0.2 with families "
                         f"among {', '.join(RANK_FAMILIES)} and non-negative weights")
    return name, weights
