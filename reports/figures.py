"""Leaderboard figures (seaborn, Agg): real-vs-synthetic scatters, metric points, ranks, losses, privacy–utility."""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ehrbench.models.rundir import LOCATION_KEYS, RESERVED_DATA_KEYS  # noqa: E402

from .aggregate import ARROWS, RANK_FAMILIES, Table  # noqa: E402
from .headline import headline_metrics, scores  # noqa: E402
from .load import RunSet  # noqa: E402
from .ranking import run_levels  # noqa: E402

COOC_CODES = 40      # co-occurrence scatter: the most prevalent binary feature columns (40 -> 780 pairs)
MAX_POINTS = 300     # training curves: at most this many logged steps per line


@dataclass(frozen=True)
class FigureInfo:
    table: str
    kind: str
    title: str
    caption: str
    path: Path


def _grid(n: int, ncols: int, size: float = 3.6) -> tuple[plt.Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 0.9), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})  # no version stamp: regenerated PNGs diff cleanly
    plt.close(fig)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


SHIPPED = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def shipped_path(name: str) -> str | None:
    """data.path of the shipped benchmarks/data/<name>.yaml (relative paths from the repository root), or None."""
    f = SHIPPED / f"{name}.yaml"
    if not f.is_file():
        return None
    from omegaconf import OmegaConf

    path = OmegaConf.to_container(OmegaConf.load(f), resolve=True).get("path")
    return None if path is None else str(SHIPPED.parents[1] / Path(path).expanduser())


def loader_options(cfg: dict, data_paths: dict[str, str]) -> dict:
    """The loader options a report reloads a run's dataset with: its recorded options (checked against the
    loader's types and ranges) minus LOCATION_KEYS; the path is the command line's `--data NAME=PATH`, else the
    shipped config's."""
    import ehrbench.data as data_pkg
    from ehrbench.models.options import check_options

    name = cfg["name"]
    if name not in data_pkg.DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(data_pkg.DATASETS))}")
    kw = {k: v for k, v in cfg.items() if k not in (*RESERVED_DATA_KEYS, *LOCATION_KEYS)}
    check_options(f"dataset '{name}'", "data", data_pkg.DATASETS[name], kw)
    if "path" in inspect.signature(data_pkg.DATASETS[name]).parameters:
        kw["path"] = data_paths.get(name) or shipped_path(name)
        if kw["path"] is None:
            raise ValueError(f"no path for dataset {name!r}: give it as --data {name}=PATH")
    return kw


def load_real(rs: RunSet, path: str, cache: dict[str, Any], data_paths: dict[str, str] | None = None) -> Any:
    """The run's dataset rebuilt from its recorded options (cached per options; see loader_options); raises with
    the reason on failure."""
    cfg = (rs.configs.get(path) or {}).get("data")
    if not cfg or "name" not in cfg:
        raise ValueError(f"{path}: no data config in run.json or .hydra/config.yaml")
    try:
        kw = loader_options(cfg, data_paths or {})
    except ValueError as e:
        raise ValueError(f"dataset {cfg['name']!r} could not be loaded ({e})") from None
    key = json.dumps({"name": cfg["name"], **kw}, sort_keys=True, default=str)
    if key not in cache:
        try:
            import ehrbench.data as data_pkg

            cache[key] = data_pkg.load_dataset(cfg["name"], **kw)
        except Exception as e:  # the figure is skipped with this reason; the tables do not need the data
            cache[key] = e
    if isinstance(cache[key], Exception):
        e = cache[key]
        raise ValueError(f"dataset {cfg['name']!r} could not be loaded ({type(e).__name__}: {str(e).strip()[:200]})")
    return cache[key]


def _synthetic(rs: RunSet, path: str, columns: tuple[str, ...]) -> np.ndarray:
    """synthetic.npz of a run with columns reordered to the real data's; raises on a missing file or column."""
    f = rs.root / path / "synthetic.npz"
    if not f.exists():
        raise FileNotFoundError(f"{path}/synthetic.npz is missing")
    with np.load(f, allow_pickle=False) as z:
        X, cols = z["X"], [str(c) for c in z["columns"]]
    idx = pd.Index(cols).get_indexer(list(columns))
    if (idx < 0).any():
        raise ValueError(f"{path}/synthetic.npz lacks column {columns[int(np.flatnonzero(idx < 0)[0])]!r}")
    return np.asarray(X[:, idx], dtype=np.float32)


def shown_models(t: Table) -> tuple[list[str], str]:
    """The rows the per-model figures draw, in leaderboard order, and a caption note: a compute sweep's largest
    budget only (its compute figure draws every budget; a panel per row and budget would be unreadable), else all."""
    levels = run_levels(t.runs)
    sizes = {z for _, z in levels.values()}
    if len(sizes) < 2:
        return list(t.models), ""
    return [m for m in t.models if levels.get(m, (0.0, -1.0))[1] == max(sizes)], \
        " Rows of the largest budget only; the compute figure draws every budget."


def _first_runs(t: Table) -> dict[str, tuple[str, object]]:
    """Per shown model in leaderboard order, (path, seed) of the complete run with the lowest seed (drawn per run)."""
    ok = t.runs[t.runs["ok"]].sort_values(["model", "seed", "path"]).drop_duplicates("model").set_index("model")
    return {m: (ok.loc[m, "path"], ok.loc[m, "seed"]) for m in shown_models(t)[0] if m in ok.index}


def fig_scatter(rs: RunSet, t: Table, out: Path, cache: dict, kind: str,
                data_paths: dict[str, str]) -> tuple[list[FigureInfo], list[str]]:
    """Real vs synthetic per model: code prevalences ("prevalence") or pairwise co-occurrence rates ("cooccurrence")."""
    runs = _first_runs(t)
    if not runs:
        return [], []
    try:
        real = load_real(rs, next(iter(runs.values()))[0], cache, data_paths)
    except ValueError as e:
        return [], [f"{t.label}: {kind} figure skipped: {e}"]
    # prevalence: every column's mean (the prevalence of a binary column); co-occurrence: binary features only
    cols = [c for c, b in zip(real.columns, real.binary_mask)
            if kind == "prevalence" or (b and c not in real.label_columns)]
    if len(cols) < 2:
        return [], [f"{t.label}: {kind} figure skipped: the dataset has fewer than 2 suitable columns"]
    R = real.train[:, pd.Index(real.columns).get_indexer(cols)]
    if kind == "cooccurrence":
        top = np.sort(np.argsort(-R.mean(0), kind="stable")[:COOC_CODES])
        cols, R = [cols[i] for i in top], R[:, top]
    what = ("per-column mean of every column (the prevalence of a binary column)" if kind == "prevalence" else
            f"pairwise co-occurrence rate P(a=1, b=1) of the {len(cols)} most prevalent binary feature columns")
    cap = (f"{what}, real training data (x) vs the lowest-seed synthetic sample (y), dashed identity line, "
           f"Pearson r in each title.{shown_models(t)[1]}")
    p = out / f"{t.slug}__{kind}.png"
    if not any((rs.root / path / "synthetic.npz").exists() for path, _ in runs.values()):
        if p.exists():  # drawn when these runs' samples were at hand; an archive never holds samples
            return [FigureInfo(t.label, kind, f"{t.label}: {kind} real vs synthetic", cap + " Kept from an earlier "
                               "render of the same runs with their samples (this one read an archive).", p)], []
        return [], [f"{t.label}: {kind} figure skipped: the runs hold no samples (an archive never does)"]
    if kind == "cooccurrence":
        iu = np.triu_indices(len(cols), 1)
        stat = lambda X: ((X.T.astype(np.float64) @ X) / len(X))[iu]  # noqa: E731
    else:
        stat = lambda X: X.mean(0, dtype=np.float64)  # noqa: E731
    x, notes, panels = stat(R), [], []
    for model, (path, seed) in runs.items():
        try:
            panels.append((model, seed, stat(_synthetic(rs, path, tuple(cols)))))
        except (OSError, ValueError, KeyError) as e:
            notes.append(f"{t.label}: {kind} panel of {model} skipped: {e}")
    if not panels or len(x) == 0:
        return [], notes
    fig, axes = _grid(len(panels), 3)
    lo = min(0.0, float(x.min()), min(float(y.min()) for _, _, y in panels))
    lim = max(float(x.max()), max(float(y.max()) for _, _, y in panels)) * 1.05 or 1.0
    for ax, (model, seed, y) in zip(axes, panels):
        sns.scatterplot(x=x, y=y, s=10, alpha=0.5, linewidth=0, ax=ax)
        ax.plot([lo, lim], [lo, lim], color="grey", lw=1, ls="--")
        ax.set(xlim=(lo, lim), ylim=(lo, lim), xlabel=f"real (train) {kind}", ylabel=f"synthetic {kind}")
        r = _pearson(x, y)
        ax.set_title(f"{model} (seed {seed}): r = {'n/a' if math.isnan(r) else f'{r:.3f}'}")
    _save(fig, p)
    return [FigureInfo(t.label, kind, f"{t.label}: {kind} real vs synthetic", cap, p)], notes


def fig_points(t: Table, out: Path) -> list[FigureInfo]:
    metrics = [m for m in t.metrics("ranked") if (t.values.loc[t.values["metric"] == m, "status"] == "ok").any()]
    if not metrics:
        return []
    goal = t.cells.drop_duplicates("metric").set_index("metric")["goal"]
    models, note = shown_models(t)
    fig, axes = _grid(len(metrics), 4, 3.4)
    v = t.values[(t.values["status"] == "ok") & t.values["model"].isin(models)]
    for ax, m in zip(axes, metrics):
        sns.pointplot(data=v[v["metric"] == m], x="value", y="model", order=models, errorbar="sd",
                      linestyle="none", capsize=0.3, ax=ax)
        ax.set(title=f"{m} {ARROWS.get(goal[m], '')}", xlabel="", ylabel="")
    p = out / f"{t.slug}__metrics.png"
    _save(fig, p)
    return [FigureInfo(t.label, "metrics", f"{t.label}: metrics by model", "Mean over seeds with ± 1 standard "
                       "deviation error bars (one point when a model has a single seed); models in leaderboard order." + note, p)]


def fig_ranks(t: Table, out: Path) -> list[FigureInfo]:
    ranked = t.metrics("ranked")
    generators = [m for m in t.models if m not in set(t.references)]  # references are never ranked
    R = t.cells.pivot(index="model", columns="metric", values="rank").reindex(index=generators, columns=ranked)
    R = R.dropna(axis=1, how="all")
    if R.empty:
        return []
    S = t.summary.loc[generators, ["mean_rank"] + [f"rank_{f}" for f in RANK_FAMILIES]].dropna(axis=1, how="all")
    M = pd.concat([R, S.set_axis([c.replace("rank_", "") + " (mean)" if c != "mean_rank" else "mean rank"
                                  for c in S.columns], axis=1)], axis=1).astype(float)
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * M.shape[1], 2.6 + 0.5 * M.shape[0]))
    sns.heatmap(M, annot=True, fmt=".1f", cmap="viridis_r", cbar=False, linewidths=0.5, ax=ax)
    ax.set(xlabel="", ylabel="")
    ax.tick_params(axis="y", rotation=0)
    plt.setp(ax.get_xticklabels(), rotation=50, ha="right")
    p = out / f"{t.slug}__ranks.png"
    _save(fig, p)
    return [FigureInfo(t.label, "ranks", f"{t.label}: rank heatmap", "Rank of each generator per metric (1 = best), "
                       "then the mean rank overall and per family; the references are not ranked.", p)]


def _train_stats(rs: RunSet, t: Table) -> tuple[pd.DataFrame, list[str]]:
    frames, notes = [], []
    for _, r in t.runs.sort_values(["model", "seed", "path"]).iterrows():
        f = rs.root / r["path"] / "train_stats.jsonl"
        if not f.exists():
            continue
        rows, bad = [], 0
        for line in f.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                rows.append({"phase": str(row.get("phase", "train")), "step": int(row["step"]), **row["loss"]})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1
        if bad:
            notes.append(f"{t.label}: {r['path']}/train_stats.jsonl has {bad} unreadable line(s), skipped")
        if rows:
            d = pd.DataFrame(rows).melt(id_vars=["phase", "step"], var_name="key", value_name="loss").dropna()
            frames.append(d.assign(model=r["model"], seed=int(r["seed"]) if pd.notna(r["seed"]) else -1))
    if not frames:
        return pd.DataFrame(), notes
    d = pd.concat(frames, ignore_index=True)
    d["series"] = d["phase"] + ": " + d["key"].astype(str)
    d = d.sort_values(["model", "seed", "series", "step"], kind="stable")
    pos = d.groupby(["model", "seed", "series"]).cumcount()
    size = d.groupby(["model", "seed", "series"])["step"].transform("size")
    keep = pos % np.maximum(1, np.ceil(size / MAX_POINTS)).astype(int) == 0
    return d[keep | (pos == size - 1)], notes


def fig_losses(rs: RunSet, t: Table, out: Path) -> tuple[list[FigureInfo], list[str]]:
    d, notes = _train_stats(rs, t)
    if d.empty:
        return [], notes
    shown, note = shown_models(t)
    models = [m for m in shown if m in set(d["model"])]
    if not models:
        return [], notes
    fig, axes = _grid(len(models), 3, 3.8)
    for ax, m in zip(axes, models):
        dm = d[d["model"] == m]
        sns.lineplot(data=dm, x="step", y="loss", hue="series", hue_order=sorted(dm["series"].unique()),
                     units="seed", estimator=None, lw=0.8, ax=ax)
        if (dm["loss"] > 0).all():
            ax.set_yscale("log")
        ax.set_title(f"{m} ({dm['seed'].nunique()} seed(s))")
        ax.legend(fontsize=7)
    p = out / f"{t.slug}__losses.png"
    _save(fig, p)
    return [FigureInfo(t.label, "losses", f"{t.label}: training losses", "Losses logged in train_stats.jsonl, one "
                       "line per seed and loss key (log scale when all positive); models without a training log are "
                       "not drawn." + note, p)], notes


def fig_privacy_utility(t: Table, out: Path) -> tuple[list[FigureInfo], list[str]]:
    """The headline figure: each model's headline utility score (x) against its headline privacy risk (y), in the
    metrics' own units with 95 % intervals; references hollow, generators that are not ranked as crosses."""
    heads = headline_metrics(t)
    if "utility" not in heads or "privacy" not in heads:
        return [], [f"{t.label}: privacy–utility figure skipped: the table has no utility or no privacy score"]
    u, p_ = scores(t, heads["utility"]), scores(t, heads["privacy"])
    models = [m for m in t.models if m in u and m in p_ and u[m].n and p_[m].n]
    if not models:
        return [], [f"{t.label}: privacy–utility figure skipped: no model has both a utility and a privacy score"]
    s = t.summary
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = sns.color_palette("tab20", n_colors=max(1, len(models)))
    for i, m in enumerate(models):
        ref, failed = bool(s.loc[m, "reference"]), s.loc[m, "failed"] != ""
        x, y = u[m], p_[m]
        xerr = [[x.mean - x.low], [x.high - x.mean]] if np.isfinite(x.low) else None
        yerr = [[y.mean - y.low], [y.high - y.mean]] if np.isfinite(y.low) else None
        tag = " (reference)" if ref else " (not ranked)" if failed else ""
        ax.errorbar(x.mean, y.mean, xerr=xerr, yerr=yerr, fmt="X" if failed else "o", ms=7, capsize=3,
                    color=colors[i], mfc="white" if ref else colors[i], lw=1, label=f"{m}{tag}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    goal = t.cells.drop_duplicates("metric").set_index("metric")["goal"]
    ax.set(xlabel=f"utility: {heads['utility']} {ARROWS.get(goal[heads['utility']], '')}",
           ylabel=f"privacy risk: {heads['privacy']} {ARROWS.get(goal[heads['privacy']], '')}")
    p = out / f"{t.slug}__privacy_utility.png"
    _save(fig, p)
    return [FigureInfo(t.label, "privacy_utility", f"{t.label}: privacy vs utility", f"Headline scores in their own "
                       f"units: {heads['utility']} (x) against {heads['privacy']} (y), means over seeds with 95 % "
                       "intervals; hollow markers are the references, crosses generators that are not ranked. "
                       "Better is toward the higher utility and the lower risk.", p)], []


def make_figures(rs: RunSet, tables: list[Table], out: str | Path,
                 data_paths: dict[str, str] | None = None) -> tuple[list[FigureInfo], list[str]]:
    """Draw every figure of every table into out/; returns the figures and one note per skipped figure.
    data_paths: dataset name -> the folder or file to reload it from (else the shipped config's path)."""
    from .sweeps import fig_compute, fig_curves, fig_epsilon  # they draw with this module's _grid and _save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    figs, notes, cache = [], [], {}
    paths = data_paths or {}
    for t in tables:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("prevalence", lambda: fig_scatter(rs, t, out, cache, "prevalence", paths)),
            ("cooccurrence", lambda: fig_scatter(rs, t, out, cache, "cooccurrence", paths)),
            ("metrics", lambda: (fig_points(t, out), [])), ("ranks", lambda: (fig_ranks(t, out), [])),
            ("losses", lambda: fig_losses(rs, t, out)), ("privacy_utility", lambda: fig_privacy_utility(t, out)),
            ("curves", lambda: fig_curves(rs, t, out)), ("privacy", lambda: fig_epsilon(t, out)),
            ("compute", lambda: fig_compute(t, out))]
        for kind, step in steps:
            try:
                f, n = step()
            except Exception as e:  # one broken figure must not cost the whole report; the note says why
                plt.close("all")
                f, n = [], [f"{t.label}: {kind} figure failed ({type(e).__name__}: {str(e).strip()[:200]})"]
            figs += f
            notes += n
    return figs, notes
