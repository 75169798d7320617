"""`python -m reports --calibrate NAME`: the calibration ladder (metrics/ladder.py) of one dataset, as tables."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import SHIPPED, loader_options
from ehrbench.models.rundir import data_key

VERDICT = "verdict.csv"  # per metric: pass / fail / n/a with the data config and metric version it holds for


def shipped_config(group: str, name: str) -> dict:
    """benchmarks/<group>/<name>.yaml resolved (one sentence naming the valid choices when absent)."""
    from omegaconf import OmegaConf

    folder = SHIPPED.parent / group
    f = folder / f"{name}.yaml"
    if not f.is_file():
        raise ValueError(f"no {group} config {name!r}; valid choices: "
                         f"{', '.join(sorted(p.stem for p in folder.glob('*.yaml')))}")
    return OmegaConf.to_container(OmegaConf.load(f), resolve=True) or {}


def ladder_config(name: str) -> tuple[str, dict]:
    """The dataset and data config a ladder calibrates: dataset NAME's shipped config, or, for a suite NAME
    (benchmarks/experiment/NAME.yaml), the data config its runs use (its data override and `data:` options)."""
    from omegaconf import OmegaConf

    suite = SHIPPED.parent / "experiment" / f"{name}.yaml"
    if not suite.is_file():
        if not (SHIPPED / f"{name}.yaml").is_file():
            choices = sorted(p.stem for folder in (SHIPPED, suite.parent) for p in folder.glob("*.yaml"))
            raise ValueError(f"--calibrate {name!r} is neither a dataset nor a suite; valid choices: {', '.join(choices)}")
        return name, shipped_config("data", name)
    exp = OmegaConf.to_container(OmegaConf.load(suite)) or {}
    dataset = next((d["override /data"] for d in exp.get("defaults", []) if isinstance(d, dict)
                    and "override /data" in d), None)
    if dataset is None:
        raise ValueError(f"suite {name!r} does not choose a dataset (defaults: override /data: NAME)")
    return dataset, {**shipped_config("data", dataset), **(exp.get("data") or {})}


def calibrate(name: str, out: str | Path, data_paths: dict[str, str] | None = None, metrics: str = "default",
              seeds: int = 3, options: dict | None = None, rejudge: bool = False) -> dict[str, Path]:
    """Score every metric of benchmarks/metrics/<metrics>.yaml on the ladder's sets of dataset or suite `name`
    (`ladder_config`, with `options` over it; the path from data_paths or that config) and write calibration.md,
    calibration.csv (every value) and verdict.csv (what reports read to keep a failed metric out of the ranks).
    rejudge: judge out/calibration.csv again (after a change of the checks) instead of scoring. Returns the paths."""
    import ehrbench.data as data_pkg
    from ehrbench.data.cache import atomic_path
    from ehrbench.metrics import ladder

    if type(seeds) is not int or seeds < 2:
        raise ValueError(f"--seeds must be an integer >= 2 (the ladder's noise is the spread over seeds), got {seeds!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; give a folder for the calibration tables")
    paths = {"markdown": out / "calibration.md", "csv": out / "calibration.csv", "verdict": out / VERDICT}
    if rejudge and not paths["csv"].is_file():
        raise FileNotFoundError(f"--rejudge needs {paths['csv']}, which a scoring run writes")
    dataset, cfg = ladder_config(name)
    cfg = {**cfg, **(options or {})}
    data = data_pkg.load_dataset(dataset, **loader_options(cfg, data_paths or {}))
    if rejudge:
        rows = pd.read_csv(paths["csv"])
        seeds = int(rows["seed"].nunique())
        if "version" not in rows:  # written before rows recorded it: the versions of this checkout
            rows["version"] = rows["metric"].map(lambda m: ladder.get_metric(m).version)
    else:
        spec = {m: kw or {} for m, kw in shipped_config("metrics", metrics).items()}
        rows = ladder.score_sets(data, spec, seeds=seeds)
    judged = ladder.judge(rows)
    verdict = ladder.verdict(judged)
    versions = rows.dropna(subset=["version"]).groupby("metric")["version"].first().astype(int)
    key = data_key(cfg)
    verdict = verdict.assign(data=dataset, data_key=key, metric_version=verdict["metric"].map(versions))
    with atomic_path(paths["csv"]) as tmp:
        rows.to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(paths["verdict"]) as tmp:
        verdict.to_csv(tmp, index=False)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(to_markdown(name if name == dataset else f"{dataset} as in {name}", key, rows, judged, verdict,
                                   seeds, data))
    return paths


def _cell(g: pd.DataFrame) -> str:
    ok = g[g["status"] == "ok"]["value"]
    if ok.empty:
        return str(g["status"].iloc[0]).split(":")[0] if len(g) else ""
    sd = ok.std(ddof=1) if len(ok) > 1 else math.nan
    return f"{ok.mean():.4g}" + (f" ± {sd:.2g}" if not math.isnan(sd) else "")


def to_markdown(name: str, key: str, rows: pd.DataFrame, judged: pd.DataFrame, verdict: pd.DataFrame, seeds: int,
                data) -> str:
    """The verdict per metric, the failed checks with their numbers, and every value (mean ± sd over seeds)."""
    from ehrbench.metrics import ladder

    small = int(rows.loc[rows["set"] == "unseen", "n"].min())
    rows = ladder.with_sizes(rows)
    lines = [f"# Calibration ladder: {name} (data config {key})", "",
             f"{len(data.train):,} train, {len(data.holdout):,} holdout, {len(data.test):,} test records; "
             f"{seeds} seeds. Checks that compare with unseen records judge fidelity and utility metrics on sets of "
             f"{small:,} records (the unseen half of the test split; columns without a size); every other check uses "
             f"sets of {len(data.train):,} (a leaderboard run's size; '(large)' columns for fidelity and utility). A "
             "metric that fails a check does not rank on this dataset (metrics/ladder.py says which orderings each "
             "family must reproduce and what 'beyond noise' means).", "",
             "| metric | family | verdict | checks passed | first failure |", "|---|---|---|---|---|"]
    for _, r in verdict.iterrows():
        lines.append(f"| {r['metric']} | {r['family']} | **{r['verdict']}** | {r['passed']}/{r['checks']} | "
                     f"{r['first_failure']} |")
    failed = judged[judged["passed"] == False]  # noqa: E712
    if len(failed):
        lines += ["", "## Failed checks", "", "| metric | check | numbers |", "|---|---|---|"]
        lines += [f"| {r['metric']} | {r['check']} | {r['reason']} |" for _, r in failed.iterrows()]
    priv = rows["metric"].map(lambda m: ladder.get_metric(m).family == "privacy")
    rows = rows.assign(column=np.where(priv | (rows["size"] == "small"), rows["set"], rows["set"] + " (large)"))
    cols = list(dict.fromkeys(rows["column"]))
    lines += ["", "## Values (mean ± sd over seeds)", "", "| metric | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols)]
    for metric, g in rows.groupby("metric", sort=False):
        lines.append(f"| {metric} | " + " | ".join(_cell(g[g["column"] == c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def load_verdicts(paths: list[Path]) -> pd.DataFrame:
    """Every verdict.csv given: metric, data_key, metric_version, verdict, first_failure."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such calibration verdict file (python -m reports --calibrate NAME "
                                "writes one)")
    frames = [pd.read_csv(p, dtype={"data_key": str}, keep_default_na=False) for p in paths]  # "n/a" is a verdict
    cols = ["metric", "data_key", "metric_version", "verdict", "first_failure", "passed", "checks"]
    return pd.concat([f.reindex(columns=cols) for f in frames], ignore_index=True) if frames else pd.DataFrame(columns=cols)


def shipped_verdicts() -> list[Path]:
    """The committed ladders: reports/calibration/<dataset>/verdict.csv, and the verdicts of metric versions that
    were replaced since, kept for the runs made with them (reports/calibration/<dataset>/previous_versions/)."""
    return sorted((Path(__file__).resolve().parent / "calibration").rglob(VERDICT))

