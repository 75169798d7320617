"""Loading hand-made run directories (CONTEXT.md format): tidy rows, and every broken run/file/metric as a failure."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from ehrbench.data import load_dataset
from ehrbench.reports import build_tables, find_run_dirs, load_runs

TINY = {"name": "synthetic", "n_patients": 200, "n_codes": 20, "seed": 0}
FAMILY = {"auc": ("utility", "max"), "mae": ("fidelity", "min"), "pearson": ("fidelity", "max"),
          "risk": ("privacy", "min"), "pearson.real": ("fidelity", "info")}


def make_run(root, model, seed, metrics=None, *, tag="t", data=None, status="ok", npz=True, losses=False,
             version=1, fit_seconds=1.0, se=None):
    """Write runs/<tag>/<data>/<model>/seed_<seed>/ with run.json, results.jsonl and optionally synthetic.npz and
    train_stats.jsonl. metrics: name -> value (float) or an "error: ..." string; se: the standard error row
    `name.se` written beside each ranked value (0: exact; None: none)."""
    data = dict(data or TINY)
    d = root / tag / data["name"] / model / f"seed_{seed}"
    d.mkdir(parents=True)
    config = {"data": data, "model": {"name": model}, "seed": seed, "tag": tag}
    info = {"run_id": f"{tag}/{data['name']}/{model}/seed_{seed}", "tag": tag, "data": data["name"], "model": model,
            "seed": seed, "status": status, "n_params": 1000, "fit_seconds": fit_seconds, "sample_seconds": 0.5,
            "evaluate_seconds": 0.1, "peak_memory_mb": 300.0, "device": "cpu", "git_commit": "abc123",
            "finished": "2026-01-02T03:04:05+00:00", "config": config, "config_hash": "h"}
    (d / "run.json").write_text(json.dumps(info))
    lines = []
    for name, value in (metrics or {}).items():
        family, goal = FAMILY[name]
        err = isinstance(value, str)
        lines.append(json.dumps({"run_id": info["run_id"], "tag": tag, "data": data["name"], "model": model,
                                 "seed": seed, "metric": name, "family": family, "goal": goal,
                                 "value": math.nan if err else value, "seconds": 0.01,
                                 "status": value if err else "ok", "metric_version": version}))
        if se is not None and not err and goal != "info":
            lines.append(json.dumps({**json.loads(lines[-1]), "metric": f"{name}.se", "goal": "info", "value": se}))
    if metrics is not None:
        (d / "results.jsonl").write_text("\n".join(lines) + "\n")
    if npz and data["name"] == "synthetic":
        real = load_dataset("synthetic", **{k: v for k, v in data.items() if k != "name"})
        rng = np.random.default_rng(seed)
        X = real.train[rng.integers(0, len(real.train), len(real.train))]
        np.savez_compressed(d / "synthetic.npz", X=X, columns=np.asarray(real.columns))
    if losses:
        rows = [{"phase": "train", "step": s, "loss": {"net": 2.0 / s}, "lr": {"net": 1e-3}, "seconds_per_step": 0.1,
                 "memory_mb": 1.0} for s in range(1, 30)]
        (d / "train_stats.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return d


def test_tidy_rows_from_complete_runs(tmp_path):
    make_run(tmp_path, "a", 0, {"pearson": 0.9, "mae": 0.1, "pearson.real": 20.0})
    make_run(tmp_path, "a", 1, {"pearson": 0.8, "mae": 0.2, "pearson.real": 20.0})
    rs = load_runs(tmp_path)
    assert list(rs.runs["path"]) == ["t/synthetic/a/seed_0", "t/synthetic/a/seed_1"] and rs.runs["ok"].all()
    assert len(rs.results) == 6 and rs.failures.empty
    r = rs.results.set_index(["seed", "metric"])
    assert r.loc[(1, "mae"), "value"] == 0.2 and r.loc[(0, "pearson.real"), "goal"] == "info"
    assert rs.configs["t/synthetic/a/seed_0"]["data"] == TINY


def test_every_broken_run_is_a_failure_row_and_never_crashes(tmp_path):
    make_run(tmp_path, "good", 0, {"pearson": 0.9, "auc": "error: ValueError: only one class in y"}, se=0.0)
    (make_run(tmp_path, "corrupt", 0, {"pearson": 0.5}) / "run.json").write_text("{not json")
    make_run(tmp_path, "noresults", 0, None)
    make_run(tmp_path, "crashed", 0, None, status="error: RuntimeError: loss is NaN at step 12")
    make_run(tmp_path, "killed", 0, None, status="running")
    badline = make_run(tmp_path, "badline", 0, {"pearson": 0.7}, se=0.0)
    with open(badline / "results.jsonl", "a") as f:
        f.write('{"metric": "mae", "value": 0.1, "status": "ok"\n{"value": 1}\n')
    nanok = make_run(tmp_path, "nanok", 0, {"pearson": 0.1}, se=0.0)
    (nanok / "results.jsonl").write_text((nanok / "results.jsonl").read_text().replace("0.1", "NaN"))
    lonely = tmp_path / "t" / "synthetic" / "lonely" / "seed_0" / ".hydra"
    lonely.mkdir(parents=True)
    (lonely / "config.yaml").write_text(json.dumps({"tag": "t", "data": TINY, "model": {"name": "lonely"}, "seed": 0}))

    rs = load_runs(tmp_path)
    f = rs.failures.set_index("path")
    reasons = {p: " / ".join(f.loc[[p], "reason"]) for p in f.index.unique()}
    assert reasons["t/synthetic/corrupt/seed_0"].startswith("corrupt run.json")
    assert reasons["t/synthetic/noresults/seed_0"] == "missing results.jsonl although run.json says status ok"
    assert reasons["t/synthetic/crashed/seed_0"] == "error: RuntimeError: loss is NaN at step 12"
    assert reasons["t/synthetic/killed/seed_0"].startswith("incomplete")
    assert "line 3 is not valid JSON" in reasons["t/synthetic/badline/seed_0"]
    assert "line 4 lacks the key(s) metric, status" in reasons["t/synthetic/badline/seed_0"]
    assert "value nan is not a finite number" in reasons["t/synthetic/nanok/seed_0"]
    assert reasons["t/synthetic/lonely/seed_0"].startswith("missing run.json")
    assert reasons["t/synthetic/good/seed_0"] == "error: ValueError: only one class in y"
    assert f.loc["t/synthetic/good/seed_0", "metric"] == "auc" and f.loc["t/synthetic/good/seed_0", "kind"] == "metric"
    assert f.loc["t/synthetic/lonely/seed_0", "model"] == "lonely"  # identity recovered from .hydra/config.yaml
    assert f.loc["t/synthetic/corrupt/seed_0", "model"] == "corrupt"  # ... or from the path
    ok = set(rs.runs.loc[rs.runs["ok"], "model"])
    assert ok == {"good", "badline", "nanok"}  # a broken run.json never contributes values
    # every model, failed or not, has a row in the table so the hole is visible
    (t,) = build_tables(rs)
    assert set(t.models) == {"good", "corrupt", "noresults", "crashed", "killed", "badline", "nanok", "lonely"}
    c = t.cells.set_index(["model", "metric"])
    assert c.loc[("good", "auc"), "n_error"] == 1 and c.loc[("good", "auc"), "n"] == 0
    assert c.loc[("crashed", "pearson"), "n"] == 0 and np.isnan(c.loc[("crashed", "pearson"), "rank"])
    listed = next(n for n in t.notes if n.startswith("listed, not ranked: "))  # no complete run: shown, never ranked
    assert "crashed (no complete run (error))" in listed and "killed (no complete run (" in listed


def test_duplicates_are_not_counted_twice(tmp_path):
    make_run(tmp_path / "a", "m", 0, {"pearson": 0.9})
    make_run(tmp_path / "b", "m", 0, {"pearson": 0.1})  # the same cell copied elsewhere
    d = make_run(tmp_path, "twice", 0, {"pearson": 0.3})
    (d / "results.jsonl").write_text((d / "results.jsonl").read_text() * 2)
    rs = load_runs(tmp_path)
    assert rs.results.groupby("path").size().to_dict() == {"a/t/synthetic/m/seed_0": 1, "t/synthetic/twice/seed_0": 1}
    reasons = list(rs.failures["reason"])
    assert any(r.startswith("duplicate of a/t/synthetic/m/seed_0") for r in reasons)
    assert any("holds 2 rows for metric pearson" in r for r in reasons)


def test_find_run_dirs_and_bad_root(tmp_path):
    make_run(tmp_path, "a", 0, {"pearson": 0.9})
    (tmp_path / "notes").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in find_run_dirs(tmp_path)] == ["t/synthetic/a/seed_0"]
    assert load_runs(tmp_path / "t" / "synthetic" / "a" / "seed_0").runs["path"].tolist() == ["."]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "missing")
    assert load_runs(tmp_path / "notes").runs.empty
    assert isinstance(load_runs(tmp_path / "notes").failures, pd.DataFrame)


def test_not_applicable_rows_are_neither_values_nor_failures(tmp_path):
    import json

    from ehrbench.reports.load import load_runs

    d = tmp_path / "t" / "synthetic" / "independent" / "seed_0"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"tag": "t", "data": "synthetic", "model": "independent", "seed": 0,
                                            "status": "ok", "config": {"data": {"name": "synthetic"}}}))
    rows = [{"metric": "prevalence_pearson", "family": "fidelity", "goal": "max", "value": 0.9, "status": "ok"},
            {"metric": "continuous_wd", "family": "fidelity", "goal": "min", "value": float("nan"),
             "status": "n/a: the dataset synthetic has no continuous columns"}]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rs = load_runs(tmp_path)
    assert list(rs.results["metric"]) == ["prevalence_pearson"]
    assert rs.failures.empty
