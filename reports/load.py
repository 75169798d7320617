"""Load run directories (run.json + results.jsonl) into tidy DataFrames; every unreadable run becomes a failure row."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ehrbench.models.rundir import data_key, settings, settings_diff, settings_hash

from .audit import CANARY, audit_reason, audit_rows, canary_reason, canary_rows

RUN_COLUMNS = ["path", "tag", "data", "model", "seed", "status", "ok", "data_key", "n_params", "fit_seconds",
               "sample_seconds", "evaluate_seconds", "steps_per_second", "peak_memory_mb", "device", "n_train",
               "n_samples", "n_features", "config_hash", "settings_hash", "git_commit", "git_dirty", "finished", "reference",
               "budget", "budget_steps", "train_flops", "fraction_of_paper", "epsilon", "generator", "target_epsilon",
               "sample_flops_per_1000", "sample_seconds_per_1000", "total_flops", "split_seed"]
RESULT_COLUMNS = ["path", "tag", "data", "model", "seed", "metric", "family", "goal", "metric_version", "value",
                  "ideal", "seconds", "status", "data_key"]
FAILURE_COLUMNS = ["kind", "path", "tag", "data", "model", "seed", "metric", "reason"]
CURVE_COLUMNS = ["path", "model", "seed", "fraction", "phase", "step", "train_flops", "train_seconds", "metric",
                 "goal", "value"]
@dataclass
class RunSet:
    """Everything found under one runs folder: runs (one row per run dir), results (one row per metric value of
    complete runs), failures (every run, file or metric that did not give a usable value) and configs."""

    root: Path
    runs: pd.DataFrame
    results: pd.DataFrame
    failures: pd.DataFrame
    configs: dict[str, dict] = field(default_factory=dict)  # run path (relative to root) -> resolved config
    curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CURVE_COLUMNS))  # curve.jsonl rows


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every folder under root holding run.json, results.jsonl or .hydra/config.yaml (sorted, deduplicated)."""
    root = Path(root)
    found = {p.parent for name in ("run.json", "results.jsonl") for p in root.rglob(name)}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    return sorted(found, key=lambda p: p.as_posix())


def _hydra_config(run_dir: Path) -> dict | None:
    p = run_dir / ".hydra" / "config.yaml"
    if not p.exists():
        return None
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
        return cfg if isinstance(cfg, dict) else None
    except Exception:  # a corrupt Hydra file only loses the fallback identity, the failure is reported elsewhere
        return None


def _identity(rel: str, config: dict | None) -> dict:
    """tag/data/model/seed from a config, falling back to the runs/<tag>/<data>/<model>/seed_<n> path."""
    parts = rel.split("/")
    ident: dict[str, Any] = {"tag": None, "data": None, "model": None, "seed": None}
    if len(parts) >= 3 and re.fullmatch(r"seed_-?\d+", parts[-1]):
        ident.update(data=parts[-3], model=parts[-2], seed=int(parts[-1][5:]))
        if len(parts) >= 4:
            ident["tag"] = parts[-4]
    if config:
        ident["tag"] = config.get("tag", ident["tag"])
        ident["data"] = (config.get("data") or {}).get("name", ident["data"])
        model = config.get("model") or {}
        ident["model"] = model.get("label") or model.get("name", ident["model"])  # external tools: their label
        ident["seed"] = config.get("seed", ident["seed"])
    return ident


def _read_run_json(path: Path) -> tuple[dict | None, str | None]:
    if not path.exists():
        return None, "missing run.json (the run never started or was deleted)"
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"corrupt run.json: {str(e).splitlines()[0]}"
    if not isinstance(info, dict):
        return None, f"corrupt run.json: expected a JSON object, got {type(info).__name__}"
    return info, None


def _read_results(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of results.jsonl and one reason per unreadable line."""
    rows, bad = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"results.jsonl line {i} is not valid JSON ({str(e).splitlines()[0]})")
            continue
        missing = [k for k in ("metric", "value", "status") if not isinstance(row, dict) or k not in row]
        if missing:
            bad.append(f"results.jsonl line {i} lacks the key(s) {', '.join(missing)}")
            continue
        rows.append(row)
    return rows, bad


def _float(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def budget_columns(info: dict, config: dict) -> dict:
    """The training budget of a run for the tables: mode (with its value), optimiser steps per phase as
    "phase steps/paper steps", training FLOPs and the share of the paper schedule's FLOPs. Runs recorded before
    budgets existed (no "budget" key) were capped per phase by trainer.max_steps: shown as "steps ≤ N (legacy)"."""
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    mode = info.get("budget")
    if mode is None:
        cap = trainer.get("max_steps")
        return {"budget": f"steps ≤ {cap} (legacy)" if cap else "paper (legacy)", "budget_steps": None,
                "train_flops": None, "fraction_of_paper": None, "epsilon": _float(info.get("epsilon"))}
    label = {"fraction": f"fraction {info.get('budget_fraction')}", "steps": f"steps ≤ {info.get('max_steps')}",
             "compute": f"compute {info.get('budget_reference') or format(float(info.get('budget_flops') or 0), '.3g')}"
             }.get(mode, mode)
    phases = info.get("phases") if isinstance(info.get("phases"), dict) else {}
    steps = ", ".join(f"{k} {v.get('steps'):,}/{v.get('paper_steps'):,}" for k, v in phases.items()
                      if isinstance(v, dict) and isinstance(v.get("steps"), int) and isinstance(v.get("paper_steps"), int))
    return {"budget": label, "budget_steps": steps or "no training", "train_flops": _float(info.get("train_flops")),
            "fraction_of_paper": _float(info.get("fraction_of_paper")), "epsilon": _float(info.get("epsilon"))}


def dp_target(config: dict | None) -> float | None:
    """The target epsilon of a private run (trainer.dp.epsilon), None for a non-private one (no dp, or inf)."""
    trainer = (config or {}).get("trainer")
    dp = trainer.get("dp") if isinstance(trainer, dict) else None
    eps = _float(dp.get("epsilon")) if isinstance(dp, dict) else math.nan
    return eps if math.isfinite(eps) else None


def split_of(config: dict | None) -> float:
    """The data split a run trained and was scored on: its seed under split_from_seed, else data.split_seed (NaN:
    not recorded)."""
    config = config or {}
    if config.get("split_from_seed"):
        return _float(config.get("seed"))
    return _float((config.get("data") or {}).get("split_seed"))


def load_runs(root: str | Path) -> RunSet:
    """Read every run directory under root into a RunSet; corrupt or incomplete runs become failure rows."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist or is not a folder")
    runs, results, failures, configs = [], [], [], {}

    def fail(kind: str, rel: str, ident: dict, reason: str, metric: str | None = None) -> None:
        failures.append({"kind": kind, "path": rel, **{k: ident.get(k) for k in ("tag", "data", "model", "seed")},
                         "metric": metric, "reason": reason})

    for run_dir in find_run_dirs(root):
        rel = run_dir.relative_to(root).as_posix() or "."
        info, problem = _read_run_json(run_dir / "run.json")
        config = (info or {}).get("config") if isinstance((info or {}).get("config"), dict) else _hydra_config(run_dir)
        ident = _identity(rel, config)
        if info:
            ident.update({k: info[k] for k in ("tag", "data", "model", "seed") if info.get(k) is not None})
        # the facts in fields: `generator` (the model's name) and `target_epsilon` (inf: not private); a private run
        # is its own row, labelled "vae (ε=3)" beside "vae"
        ident["generator"], target = ident["model"], dp_target(config)
        ident["target_epsilon"] = target if target is not None else math.inf
        if target is not None:
            ident["model"] = f"{ident['model']} (ε={target:g})"
        if config:
            configs[rel] = config
        dkey = data_key((config or {}).get("data"))
        status = str(info.get("status")) if info else "unreadable"
        ok = problem is None and status == "ok"
        runs.append({**{c: (info or {}).get(c) for c in RUN_COLUMNS}, **ident, "path": rel, "status": status,
                     "ok": ok, "data_key": dkey, **budget_columns(info or {}, config or {}), "split_seed": split_of(config),
                     "settings_hash": (info or {}).get("settings_hash") or settings_hash(config) or "unknown"})
        if problem:
            fail("run", rel, ident, problem)
            continue
        if status != "ok":
            reason = ("incomplete: status 'running' (interrupted, or still running)" if status == "running"
                      else status)
            fail("run", rel, ident, reason)
            continue
        if not (run_dir / "results.jsonl").exists():
            fail("run", rel, ident, "missing results.jsonl although run.json says status ok")
            runs[-1]["ok"] = False
            continue
        rows, bad = _read_results(run_dir / "results.jsonl")
        # a metric that does not apply to the dataset ("n/a: ..." rows, e.g. continuous metrics on binary data)
        # is neither a value nor a failure
        rows = [r for r in rows if not str(r.get("status")).startswith("n/a")]
        for reason in bad:
            fail("file", rel, ident, reason)
        seen: dict[str, int] = {}
        for row in rows:
            metric = str(row["metric"])
            seen[metric] = seen.get(metric, 0) + 1
            value, st = _float(row.get("value")), str(row.get("status"))
            if st == "ok" and not math.isfinite(value):
                st = f"error: value {row.get('value')} is not a finite number although the row says status ok"
            results.append({**ident, "path": rel, "metric": metric, "family": row.get("family") or "other",
                            "goal": row.get("goal") or "info", "metric_version": int(row.get("metric_version") or 1),
                            "value": value if st == "ok" else math.nan, "ideal": _float(row.get("ideal")),
                            "seconds": _float(row.get("seconds")),
                            "status": st, "data_key": dkey})
            if st != "ok":
                fail("metric", rel, ident, st, metric)
        for metric, count in sorted(seen.items()):
            if count > 1:
                fail("file", rel, ident, f"results.jsonl holds {count} rows for metric {metric}; the last one is used",
                     metric)
        if seen:
            # keep only the last row per metric (a metric listed twice would otherwise count as two seeds)
            last = pd.DataFrame(results[-len(rows):]).drop_duplicates("metric", keep="last")
            del results[-len(rows):]
            results.extend(last.to_dict("records"))
        elif not bad:
            fail("run", rel, ident, "results.jsonl is empty")

    curves = []
    for r in runs:  # quality-vs-compute points (curve.eval_at) of complete runs; a bad line is a file failure
        path = root / r["path"] / "curve.jsonl"
        if not r["ok"] or not path.exists():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            try:
                row = json.loads(line)
                curves.append({**{c: row.get(c) for c in CURVE_COLUMNS}, "path": r["path"], "model": r["model"],
                               "seed": r["seed"], "value": _float(row["value"]) if row.get("status") == "ok" else math.nan})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                fail("file", r["path"], r, f"curve.jsonl line {i} is not a valid curve row")
    runs_df = cost_columns(pd.DataFrame(runs, columns=RUN_COLUMNS))
    results_df = pd.DataFrame(results, columns=RESULT_COLUMNS)
    runs_df, results_df = _flag_duplicate_cells(runs_df, results_df, failures)
    ident = runs_df.set_index("path")  # a private run whose attack beats its (epsilon, delta): a failure row
    for r in audit_rows(runs_df, results_df, configs).to_dict("records"):
        if r["above"]:
            fail("privacy", r["path"], ident.loc[r["path"]].to_dict(), audit_reason(r), "mia_auc")
    for r in canary_rows(runs_df, results_df).to_dict("records"):
        if r["above"]:
            fail("privacy", r["path"], ident.loc[r["path"]].to_dict(), canary_reason(r), CANARY)
    runs_df = runs_df.sort_values("path", kind="stable").reset_index(drop=True)
    results_df = results_df.sort_values(["path", "metric"], kind="stable").reset_index(drop=True)
    fail_df = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    fail_df = fail_df.sort_values(["path", "kind", "metric", "reason"], kind="stable", na_position="first")
    return RunSet(root, runs_df, results_df, fail_df.reset_index(drop=True), configs,
                  pd.DataFrame(curves, columns=CURVE_COLUMNS))


def cost_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """The price in full: sampling seconds per 1,000 records, and total FLOPs = training FLOPs + the sampling FLOPs
    of the records the run drew (NaN where the run recorded no sampling FLOPs: older runs, numpy generators)."""
    num = lambda c: pd.to_numeric(runs[c], errors="coerce")  # noqa: E731
    n = num("n_samples").where(num("n_samples") > 0)
    return runs.assign(sample_seconds_per_1000=num("sample_seconds") / n * 1000.0,
                       total_flops=num("train_flops").fillna(0.0) + num("sample_flops_per_1000") * n / 1000.0)


def _flag_duplicate_cells(runs: pd.DataFrame, results: pd.DataFrame,
                          failures: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two complete runs of the same (tag, settings, model, seed) would count as two seeds: keep the first path."""
    ok = runs[runs["ok"].astype(bool)]
    key = ["tag", "data_key", "settings_hash", "model", "seed"]
    first = ok.drop_duplicates(key, keep="first").set_index(key)["path"]
    dups = ok[ok.duplicated(key, keep="first")]
    for r in dups.to_dict("records"):
        failures.append({"kind": "run", **{k: r[k] for k in ("path", "tag", "data", "model", "seed")}, "metric": None,
                         "reason": f"duplicate of {first.loc[tuple(r[k] for k in key)]} (same tag, settings, "
                                   f"model and seed); not counted"})
    drop = runs["path"].isin(set(dups["path"]))
    runs = runs.assign(ok=runs["ok"].astype(bool) & ~drop)
    return runs, results[~results["path"].isin(set(dups["path"]))]


def settings_labels(runs: pd.DataFrame, configs: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """Row label per run path: the model name, plus "[key=value, ...]" of the settings that differ between the
    runs of that model with different settings_hash (runs without a readable config keep the plain name)."""
    labels = {p: str(m) for p, m in zip(runs["path"], runs["model"])}
    notes: list[str] = []
    known = runs[runs["settings_hash"].fillna("unknown") != "unknown"]
    for model, grp in known.groupby("model", sort=True):
        variants = grp.drop_duplicates("settings_hash")
        if len(variants) < 2 or any(p not in configs for p in variants["path"]):
            continue
        sets = {h: settings(configs[p]) for h, p in zip(variants["settings_hash"], variants["path"])}
        first = next(iter(sets.values()))
        keys = sorted({k for other in sets.values() for k in settings_diff(first, other)})
        shown = keys[:3]
        for h, st in sets.items():
            flat = _flatten(st)
            text = ", ".join(f"{k}={fmt_setting_value(flat.get(k))}" for k in shown) + (f", +{len(keys) - 3} more"
                                                                              if len(keys) > 3 else "")
            for p in grp.loc[grp["settings_hash"] == h, "path"]:
                labels[p] = f"{model} [{text}]"
        notes.append(f"runs of {model} use {len(sets)} different settings ({', '.join(keys)}); each has its own "
                     f"row, labelled by what differs")
    return labels, notes


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"lr": 1}} -> {"model.lr": 1}."""
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def fmt_setting_value(v: object) -> str:
    """A setting value in a row label: numbers as Python writes them, lists/dicts as compact JSON."""
    return json.dumps(v, separators=(",", ":"), default=str) if isinstance(v, (list, dict, type(None))) else str(v)
