"""End to end: real `trainer=debug` sweeps through run_benchmark.py's CLI, then `python -m reports` on them."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ehrbench.data import load_dataset
from ehrbench.reports import load_runs, write_report
from ehrbench.reports.archive import pack, unpack
from tests.conftest import REPO

SWEEP = ["-m", "model=independent,ehrdiff", "trainer=debug", "metrics=fast", "data.n_patients=1000",
         "data.n_codes=30", "tag=e2e", "curve.eval_at=[0.5,1.0]", "curve.n_samples=200"]


def run_cli(runs, *extra, timeout=240):
    out = subprocess.run([sys.executable, "run_benchmark.py", *SWEEP, f"paths.runs={runs}", *extra], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_cli(root)
    return root


def test_sweep_layout_and_resume_skip(runs):
    for m in ("independent", "ehrdiff"):
        d = runs / "e2e" / "synthetic" / m / "seed_0"
        assert json.loads((d / "run.json").read_text())["status"] == "ok"
    before = (runs / "e2e" / "synthetic" / "ehrdiff" / "seed_0" / "results.jsonl").read_bytes()
    out = run_cli(runs)  # the same command again: complete cells are skipped, nothing is recomputed
    assert out.count("already complete") == 2
    assert (runs / "e2e" / "synthetic" / "ehrdiff" / "seed_0" / "results.jsonl").read_bytes() == before


def test_a_suite_resumes_from_its_archive(runs, tmp_path):
    """runs.tar.gz extracted into a fresh runs folder: the same command skips every archived cell."""
    pack(runs / "e2e", tmp_path / "runs.tar.gz")
    unpack(tmp_path / "runs.tar.gz", tmp_path / "fresh" / "e2e")
    assert not list((tmp_path / "fresh").rglob("state.pt"))  # no checkpoint travelled, only the records
    out = run_cli(tmp_path / "fresh")
    assert out.count("already complete") == 2
    a, b = (pd.read_csv(write_report(r, tmp_path / n)["csv"]) for r, n in ((runs, "a"), (tmp_path / "fresh", "b")))
    pd.testing.assert_frame_equal(a, b)


def test_report_on_real_runs(runs, tmp_path):
    paths = write_report(runs, tmp_path)
    csv = pd.read_csv(paths["csv"])
    assert set(csv["table"]) == {"e2e / synthetic"} and set(csv["model"]) == {"independent", "ehrdiff"}
    # the table's value is the run's own row ...
    d = runs / "e2e" / "synthetic" / "independent" / "seed_0"
    row = next(json.loads(l) for l in (d / "results.jsonl").read_text().splitlines()
               if json.loads(l)["metric"] == "prevalence_pearson")
    cell = csv[(csv["model"] == "independent") & (csv["metric"] == "prevalence_pearson")].iloc[0]
    assert cell["mean"] == pytest.approx(row["value"], rel=1e-9) and cell["n"] == 1
    # independent is a reference (run.json says so): shown with its values, never ranked
    assert json.loads((d / "run.json").read_text())["reference"] is True
    assert cell["reference"] and np.isnan(cell["rank"])
    md = paths["markdown"].read_text()
    assert "| independent (reference) | not ranked |" in md and "| ehrdiff | 1 |" in md
    # ... and both agree with a prevalence correlation recomputed here from synthetic.npz and the dataset
    real = load_dataset("synthetic", n_patients=1000, n_codes=30, seed=0)
    z = np.load(d / "synthetic.npz")
    assert list(z["columns"]) == list(real.columns)
    r = np.corrcoef(real.train.mean(0), z["X"].mean(0))[0, 1]
    assert cell["mean"] == pytest.approx(r, abs=1e-6)
    figs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    kinds = ["prevalence", "cooccurrence", "metrics", "ranks", "losses", "curves"]
    # the quality-vs-compute points: two per curve metric for the trained model, none for the reference
    rs = load_runs(runs)
    pts = rs.curves[rs.curves["metric"] == "prevalence_pearson"]
    assert set(pts["model"]) == {"ehrdiff"} and sorted(pts["fraction"]) == [0.5, 1.0]
    run = json.loads((runs / "e2e" / "synthetic" / "ehrdiff" / "seed_0" / "run.json").read_text())
    assert pts["train_flops"].max() == run["train_flops"] > 0 and run["budget"] == "steps"
    both = csv[csv["metric"].isin(["tstr_auroc", "mia_auc"]) & (csv["n"] > 0)].groupby("model")["metric"].nunique()
    if (both == 2).any():  # the headline figure: a model with a utility and a privacy score
        kinds.append("privacy_utility")
    assert figs == sorted(f"e2e_synthetic__{k}.png" for k in kinds)
    html = paths["html"].read_text()
    assert html.count("<img ") == len(figs)
    errors = [json.loads(l) for f in runs.glob("e2e/synthetic/*/seed_0/results.jsonl") for l in f.read_text().splitlines()
              if json.loads(l)["status"] != "ok"]  # e.g. TSTR on a debug model that never samples the label
    md = paths["markdown"].read_text()
    fails = pd.read_csv(paths["failures"]) if errors else pd.DataFrame(columns=["metric", "reason"])
    assert sorted(zip(fails["metric"], fails["reason"])) == sorted((e["metric"], e["status"]) for e in errors)
    assert all(e["status"] in md for e in errors)
    assert ("No run, file or metric failed." in md) == (not errors)


@pytest.mark.slow
def test_joblib_launcher_runs_a_sweep(tmp_path):
    run_cli(tmp_path, "hydra/launcher=joblib", timeout=600)
    assert len(list(tmp_path.glob("e2e/synthetic/*/seed_0/run.json"))) == 2


def test_the_diabetes130_compute_suite_runs_at_toy_size(tmp_path):
    """The GPU suite's one command, on simulated data and two tiny budgets: a cell per (generator, budget), each
    budget ranked on its own, the compute figure and the plateau table in the report."""
    out = subprocess.run([sys.executable, "run_benchmark.py", "-m", "+experiment=compute_diabetes130", "data=synthetic",
                          "data.n_patients=300", "data.n_codes=30", "model=ehrdiff,vae", "seed=0",
                          "trainer.reference_steps=1,2", "metrics=fast", "n_samples=100", f"paths.runs={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    cells = sorted(p.parent.parent.name for p in (tmp_path / "compute_diabetes130" / "synthetic").glob("*/seed_0/run.json"))
    assert cells == ["ehrdiff_r1", "ehrdiff_r2", "vae_r1", "vae_r2"]
    paths = write_report(tmp_path / "compute_diabetes130", tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "compute 2 x ehrdiff" in md and "where each generator stops improving" in md
    assert len(list((tmp_path / "report" / "figures").glob("*__compute.png"))) == 1
