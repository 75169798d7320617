"""Figures along a budget axis: quality vs training compute (curves, compute sweeps) and vs the privacy budget."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns

from .aggregate import ARROWS, Table
from .figures import FigureInfo, _grid, _save
from .headline import headline_metrics
from .load import RunSet
from .ranking import NO_LEVEL, run_levels


def fig_curves(rs: RunSet, t: Table, out: Path) -> tuple[list[FigureInfo], list[str]]:
    """Quality vs training compute (curve.eval_at): each curve metric against training FLOPs, one line per model."""
    c = rs.curves[rs.curves["path"].isin(t.runs["path"])]
    if c.empty:
        return [], []
    c = c.assign(model=c["path"].map(t.runs.set_index("path")["model"]), train_flops=c["train_flops"].astype(float))
    metrics = sorted(c["metric"].unique(), key=lambda m: ("." in m, m))
    metrics = [m for m in metrics if "." not in m] or metrics
    fig, axes = _grid(len(metrics), 3, 3.8)
    order = [m for m in t.models if m in set(c["model"])]
    for i, (ax, m) in enumerate(zip(axes, metrics)):
        d = c[c["metric"] == m].dropna(subset=["value"])
        goal = d["goal"].dropna().iloc[0] if d["goal"].notna().any() else ""
        _against_flops(ax, d, "model", order, "sd", f"{m} {ARROWS.get(goal, '')}", i == 0)
    return _saved(fig, out, t, "curves", f"{t.label}: quality vs training compute", "Each curve metric of samples "
                  "drawn during training (curve.eval_at shares of the budget), against the training FLOPs spent "
                  "so far (log scale); lines are means over seeds, bands one standard deviation. A ranking that "
                  "changes along x depends on the budget.")


def _saved(fig, out: Path, t: Table, kind: str, title: str, caption: str) -> tuple[list[FigureInfo], list[str]]:
    """Save a figure as out/<table slug>__<kind>.png and describe it (no notes)."""
    p = out / f"{t.slug}__{kind}.png"
    _save(fig, p)
    return [FigureInfo(t.label, kind, title, caption, p)], []


def _against_flops(ax, d: pd.DataFrame, hue: str, order: list[str], errorbar, title: str, legend: bool) -> None:
    """One panel: the values against training FLOPs (log x), a line per `hue` through the means, with a band."""
    sns.lineplot(data=d, x="train_flops", y="value", hue=hue, hue_order=order, estimator="mean", errorbar=errorbar,
                 marker="o", ax=ax, legend=legend, seed=0, palette=_colours(order))  # seeded: the same bands each time
    ax.set(xscale="log", title=title, xlabel="training FLOPs", ylabel="")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short log axis


def _colours(order: list[str]) -> dict[str, tuple]:
    return dict(zip(order, sns.color_palette(n_colors=len(order))))


def _mark_failed(ax, d: pd.DataFrame, failed: set[str], order: list[str], label: bool) -> None:
    """Hollow markers over the budget means of rows that failed the sanity gate (shown, not ranked)."""
    colours = _colours(order)
    pts = d[d["model"].isin(failed)].groupby(["model", "line"], as_index=False)[["train_flops", "value"]].mean()
    if pts.empty:
        return
    ax.scatter(pts["train_flops"], pts["value"], s=70, facecolors="white", edgecolors=[colours[g] for g in pts["line"]],
               linewidths=1.5, zorder=4)
    if label:  # the legend's key, in grey
        ax.scatter([], [], s=70, facecolors="white", edgecolors="0.4", linewidths=1.5, label="failed the sanity gate (not ranked)")


def fig_compute(t: Table, out: Path) -> tuple[list[FigureInfo], list[str]]:
    """Quality vs training compute across separate runs at several budgets (a compute sweep): each family's headline
    score against the run's training FLOPs (log x), one line per generator through its budgets' means with a 95 %
    band over seeds, the references as horizontal lines."""
    lv = run_levels(t.runs)
    sizes = {z for _, z in lv.values()}
    heads = headline_metrics(t)
    if len(sizes) < 2 or not heads:
        return [], []
    every = t.runs.assign(line=t.runs["model"].map(t.generators),
                          train_flops=pd.to_numeric(t.runs["train_flops"], errors="coerce"))
    runs, stopped = every[every["ok"].astype(bool)], every[~every["ok"].astype(bool)]
    # a run that stopped early sits at its budget's FLOPs (its own, else its row's complete runs'), never dropped
    stopped = stopped.assign(train_flops=stopped["train_flops"].fillna(
        stopped["model"].map(runs.groupby("model")["train_flops"].mean()))).dropna(subset=["train_flops"])
    ref = set(t.references)
    gated = (t.summary["failed"] != "") & ~t.summary["failed"].str.startswith("no complete run")  # those: red crosses
    failed = set(t.summary.index[gated & ~t.summary["reference"].astype(bool)])
    v = t.values[(t.values["status"] == "ok") & t.values["metric"].isin(list(heads.values()))]
    v = v.merge(runs[["path", "line", "train_flops"]], on="path")
    fig, axes = _grid(len(heads), 3, 3.8)
    goal = t.cells.drop_duplicates("metric").set_index("metric")["goal"]
    order = sorted(set(v.loc[~v["model"].isin(ref), "line"]))  # one colour per generator in every panel
    gens = runs[~runs["model"].isin(ref)]
    budgets = sorted(gens.groupby(gens["model"].map(lambda m: lv.get(m, NO_LEVEL)[1]))["train_flops"].mean().dropna())
    for i, (ax, (fam, metric)) in enumerate(zip(axes, heads.items())):
        d = v[v["metric"] == metric]
        trained = d[~d["model"].isin(ref)]
        _against_flops(ax, trained, "line", order, ("ci", 95), f"{fam}: {metric} {ARROWS.get(goal[metric], '')}", i == 0)
        ax.set_xticks(budgets, [f"{x:.2g}" for x in budgets], fontsize=7)  # a short log axis has no decade tick
        _mark_failed(ax, trained, failed, order, i == 0)
        for j, (name, r) in enumerate(d[d["model"].isin(ref)].groupby("line")):
            ax.axhline(r["value"].mean(), color="0.4", ls=("--", ":", "-.")[j % 3], lw=1, label=f"{name} (reference)")
        if len(stopped):
            ax.scatter(stopped["train_flops"], np.full(len(stopped), ax.get_ylim()[0]), marker="x", color="red",
                       clip_on=False, zorder=5, label="run not complete (see Failures)")
        if i == 0:
            ax.legend(fontsize=7)
    return _saved(fig, out, t, "compute", f"{t.label}: quality vs training compute", "Each family's headline score "
                  "of separate runs at several training budgets, against the run's training FLOPs (log scale); "
                  "lines join the means per budget, bands are bootstrap 95 % intervals over seeds, hollow markers "
                  "budgets where the generator failed the sanity gate (not ranked there), dashed lines the "
                  "references, red crosses on the x axis runs at that budget that did not complete (diverged, "
                  "stopped or still running; their status is in the Failures table).")


EPSILON_METRICS = ("tstr_auroc", "cooccurrence_pearson", "prevalence_pearson", "cmd", "mia_auc", "dcr")


def fig_epsilon(t: Table, out: Path) -> tuple[list[FigureInfo], list[str]]:
    """Privacy-utility tradeoff (trainer.dp runs): utility, fidelity and attack metrics against the spent epsilon,
    one line per generator; non-private runs sit at the right end, marked ∞."""
    runs = t.runs.assign(epsilon=pd.to_numeric(t.runs.get("epsilon"), errors="coerce"))
    if not runs["epsilon"].notna().any():
        return [], []
    v = t.values[(t.values["status"] == "ok") & t.values["metric"].isin(EPSILON_METRICS)]
    v = v.merge(runs[["path", "epsilon", "generator", "target_epsilon"]], on="path")
    target = pd.to_numeric(v["target_epsilon"], errors="coerce").replace(np.inf, np.nan)  # NaN = not private
    inf_x = float(target.max()) * 4 if target.notna().any() else 1.0
    v = v.assign(x=target.fillna(inf_x))
    metrics = [m for m in EPSILON_METRICS if m in set(v["metric"])]
    fig, axes = _grid(len(metrics), 3, 3.8)
    for i, (ax, m) in enumerate(zip(axes, metrics)):
        sns.lineplot(data=v[v["metric"] == m], x="x", y="value", hue="generator", estimator="mean", errorbar="sd",
                     marker="o", ax=ax, legend=i == 0)
        goal = v.loc[v["metric"] == m, "goal"].iloc[0] if "goal" in v else ""
        ticks = sorted(set(v["x"]))
        ax.set(xscale="log", title=f"{m} {ARROWS.get(goal, '')}", xlabel="target epsilon", ylabel="")
        ax.set_xticks(ticks, [("∞" if x == inf_x else f"{x:.3g}") for x in ticks])
        ax.minorticks_off()
    return _saved(fig, out, t, "privacy", f"{t.label}: quality vs privacy budget", "Each metric against the run's "
                  "target epsilon (log scale; ∞ = not private; the epsilon spent, at most the target, is in the table); lines are means over seeds, "
                  "bands one standard deviation. mia_auc beside epsilon is the empirical check: the privacy audit "
                  "note under the table compares each run with the advantage its (ε, δ) allows.")
