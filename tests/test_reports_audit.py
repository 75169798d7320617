"""Privacy audit: the (epsilon, delta) bound on a membership attack's advantage, and the report's check against it."""
import json
import math

import numpy as np
import pytest

from ehrbench.metrics.privacy import mia_advantage_bound
from ehrbench.reports import build_tables, load_runs
from tests.test_reports_load import make_run


@pytest.mark.parametrize("eps, delta", [(0.0, 0.0), (0.1, 0.0), (1.0, 0.0), (1.0, 1e-5), (3.0, 0.01), (0.1, 0.2),
                                        (10.0, 1e-5)])
def test_the_bound_is_the_area_under_the_dp_roc_envelope(eps, delta):
    """Against a fine numerical integral of min(1, e^eps a + delta, 1 - e^-eps (1 - delta - a)) and, for delta = 0,
    the closed form tanh(eps / 2) (worked by hand: the AUC is e^eps / (e^eps + 1))."""
    a = np.linspace(0.0, 1.0, 1_000_001)
    T = np.minimum.reduce([np.ones_like(a), math.exp(eps) * a + delta, 1 - (1 - delta - a) / math.exp(eps)])
    assert mia_advantage_bound(eps, delta) == pytest.approx(2 * np.trapezoid(T, a) - 1, abs=1e-7)  # grid error
    if delta == 0:
        assert mia_advantage_bound(eps, delta) == pytest.approx(math.tanh(eps / 2), abs=1e-12)


def test_the_bound_grows_with_epsilon_and_delta_and_rejects_bad_input():
    eps = [0.0, 0.5, 1.0, 3.0, 10.0, math.inf]
    b = [mia_advantage_bound(e, 1e-5) for e in eps]
    assert b == sorted(b) and b[-1] == 1.0 and mia_advantage_bound(1.0, 1e-3) > mia_advantage_bound(1.0, 1e-5)
    with pytest.raises(ValueError, match="needs epsilon >= 0"):
        mia_advantage_bound(-1.0, 1e-5)


def private_run(root, model, seed, advantage, epsilon=1.0, delta=1e-5):
    d = make_run(root, model, seed, {"pearson": 0.9}, tag="dp")
    info = json.loads((d / "run.json").read_text())
    info["config"]["trainer"] = {"dp": {"epsilon": 1, "delta": delta}}
    info["epsilon"] = epsilon
    (d / "run.json").write_text(json.dumps(info))
    row = {"metric": "mia_auc", "family": "privacy", "goal": "min", "value": advantage, "status": "ok"}
    with open(d / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return d


def test_a_run_whose_attack_beats_its_epsilon_is_a_failure_row_and_a_note(tmp_path):
    private_run(tmp_path, "honest", 0, 0.01)
    private_run(tmp_path, "leaky", 0, 0.70)  # the bound at epsilon 1, delta 1e-5 is 0.462
    make_run(tmp_path, "plain", 0, {"pearson": 0.95}, tag="dp")  # not private: never audited
    rs = load_runs(tmp_path)
    f = rs.failures[rs.failures["kind"] == "privacy"]
    assert list(f["model"]) == ["leaky (ε=1)"] and list(f["metric"]) == ["mia_auc"]
    assert "advantage 0.7 is above the 0.462 that (epsilon 1, delta 1e-05) allows" in f["reason"].iloc[0]
    (t,) = build_tables(rs)
    note = next(n for n in t.notes if n.startswith("privacy audit"))
    assert "2 private run(s)" in note and "closest to its bound is leaky (ε=1) seed 0" in note
    assert "1 above it (dp/synthetic/leaky/seed_0)" in note


def test_honest_private_runs_give_a_clean_audit(tmp_path):
    private_run(tmp_path, "honest", 0, 0.01)
    private_run(tmp_path, "honest", 1, 0.02)
    rs = load_runs(tmp_path)
    assert (rs.failures["kind"] != "privacy").all()
    (t,) = build_tables(rs)
    assert any("none is above the advantage its spent (ε, δ) allows" in n for n in t.notes)
