"""The calibration ladder (metrics/ladder.py, reports/calibrate.py): its sets, its checks against hand-made values,
a registry-driven run over every metric, the flaws of issue #28 it finds, and reports that stop ranking failed
metrics."""
import inspect
import math

import numpy as np
import pandas as pd
import pytest

from ehrbench.data import EHRData, load_dataset
from ehrbench.metrics import METRICS, ladder
from ehrbench.reports import build_tables, load_runs
from tests.conftest import REPO
from tests.test_reports_load import make_run


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_patients=1200, n_codes=60, seed=1)


def continuous_data(n: int = 600, seed: int = 0) -> EHRData:
    """Two codes, a label and two continuous columns in [0, 1], one tied to the first code."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) < 0.3
    X = np.c_[a, rng.random(n) < 0.5, rng.random(n) < 0.2 + 0.4 * a, np.clip(0.3 + 0.4 * a + 0.1 * rng.standard_normal(n), 0, 1),
              rng.beta(2, 5, n)].astype(np.float32)
    return EHRData(X[:400], X[400:500], X[500:], ("A", "B", "DEATH", "LAB_A", "LAB_B"),
                   ("binary", "binary", "binary", "continuous", "continuous"), ("DEATH",), name="cont")


def test_sets_are_what_they_say(data):
    unseen = data.test[:100]
    sets = ladder.build_sets(data, unseen, seed=0)
    assert set(sets) == set(ladder.SETS) and sets["shifted"] == "the dataset has no continuous columns"
    for name, X in sets.items():
        if not isinstance(X, str):
            assert X.shape == unseen.shape and X.dtype == np.float32 and set(np.unique(X)) <= {0.0, 1.0}, name
    R = sets["resample"]
    assert (R[:, None, :] == data.train[None, :, :]).all(2).any(1).all()  # every record a verbatim train record
    for name, k in ladder.FLIPS.items():
        assert abs((sets[name] != R).mean() - k) < 0.25 * k + 0.005, name  # k of the cells changed
    assert not sets["empty"].any() and sets["all_codes"][:, ~np.isin(data.columns, data.label_columns)].all()
    assert (sets["one_record"] == sets["one_record"][0]).all()
    codes = data.binary_mask & ~np.isin(data.columns, data.label_columns)
    inv = sets["invented"]
    assert (inv[:, codes].sum(1) == unseen[:, codes].sum(1)).all()  # the same number of codes per record ...
    p = data.train[:, codes].mean(0)
    rare = p <= np.sort(p)[codes.sum() // 2 - 1]
    assert not inv[:, codes][:, ~rare].any()  # ... all among the rarer half of the vocabulary


def test_continuous_sets():
    d = continuous_data()
    unseen = d.test[:50]
    sets = ladder.build_sets(d, unseen, seed=0)
    cont = ~d.binary_mask
    np.testing.assert_allclose(sets["shifted"][:, cont], unseen[:, cont] + 3 * d.train[:, cont].std(0), rtol=1e-6)
    assert (sets["shifted"][:, ~cont] == unseen[:, ~cont]).all()
    lo, hi = d.train.min(0), d.train.max(0)
    assert ((sets["noise"][:, cont] >= lo[cont]) & (sets["noise"][:, cont] <= hi[cont])).all()


def rows(metric: str, values: dict[str, list[float]], se: float | None = None) -> pd.DataFrame:
    spec = METRICS[metric]
    return pd.DataFrame([{"set": s, "seed": i, "metric": metric, "n": 10, "value": v, "se": se, "goal": spec.goal,
                          "ideal": 0.0 if spec.ideal == 0.0 else None, "status": "ok"}
                         for s, vs in values.items() for i, v in enumerate(vs)])


def test_judge_by_hand():
    good = {"unseen": [0.10, 0.12], "resample": [0.10, 0.10], "independent": [0.30, 0.32]}
    good.update({g: [0.9, 0.9] for g in ladder.GARBAGE})
    j = ladder.judge(rows("cmd", good)).set_index("check")
    assert j["passed"].all() and len(j) == 2 + 2 * len(ladder.GARBAGE) - len(ladder.PARTIAL)
    # unseen 0.11 vs resample 0.10: sd 0.01414 and 0, one-run tolerance 2 x 0.01414 = 0.028: not worse
    assert j.loc["unseen >= resample", "reason"] == "unseen 0.11 vs resample 0.1 (2 se 0.028)"
    bad = {**good, "empty": [0.2, 0.2]}  # garbage scored better than independent: fails, and only that check
    j = ladder.judge(rows("cmd", bad)).set_index("check")
    assert list(j.index[~j["passed"].astype(bool)]) == ["independent >= empty"]
    # "better" needs the means apart by more than 2 sqrt(s_a^2/n_a + s_b^2/n_b): 0.30/0.32 vs 0.31/0.33 is not
    close = {**good, "resample": [0.31, 0.33]}
    j = ladder.judge(rows("cmd", close)).set_index("check")
    assert not j.loc["resample > independent", "passed"]
    assert j.loc["resample > independent", "reason"] == "resample 0.32 vs independent 0.31 (2 se 0.028)"


def test_judge_privacy_and_unscorable_sets():
    vals = {"resample": [0.9, 0.9], "flip_1": [0.5, 0.5], "flip_5": [0.2, 0.2], "flip_20": [0.0, 0.0],
            "unseen": [0.01, -0.01], **{g: [0.0, 0.0] for g in ladder.FAR}}
    j = ladder.judge(rows("dcr", vals, se=0.02)).set_index("check")
    assert j["passed"].all()
    assert j.loc["unseen: no risk", "reason"] == "unseen 0 <= no-risk 0 + 2 se 0.04"  # the reported se counts
    r = rows("dcr", {**vals, "noise": [0.3, 0.3]}, se=0.02)
    j = ladder.judge(r).set_index("check")
    assert not j.loc["noise: no risk", "passed"]
    r.loc[r["set"] == "resample", "status"] = "error: ValueError: x"  # real data the metric cannot score fails
    assert not ladder.judge(r).set_index("check").loc["flip_20 > resample", "passed"]
    g = rows("cmd", {"unseen": [0.1, 0.1], "resample": [0.1, 0.1], "independent": [0.3, 0.3],
                     **{s: [0.9, 0.9] for s in ladder.GARBAGE}})
    g.loc[g["set"] == "empty", "status"] = "error: ValueError: constant"  # garbage it cannot score: ranked last
    assert ladder.judge(g)["passed"].all()


@pytest.fixture(scope="module")
def scored(data):
    spec = {m: {"n": 400} if "n" in inspect.signature(METRICS[m].fn).parameters else {} for m in METRICS}
    spec["detection_auc"] = spec["detection"] = {"n": 400, "n_estimators": 10}
    for m in ("tstr_auroc", "trtr_auroc"):
        spec[m] = {"n_estimators": 10}
    spec["dimwise_prediction"] = {"top_k": 10, "n_train": 400}
    return ladder.score_sets(data, spec, seeds=2)


def test_every_registered_metric_gets_a_verdict(scored):
    v = ladder.verdict(ladder.judge(scored)).set_index("metric")
    assert set(v.index) == set(METRICS)
    for m, spec in METRICS.items():
        if spec.goal == "info":
            assert v.loc[m, "checks"] == 0
        elif spec.name.startswith("continuous_"):  # all-binary data: the metric does not apply here
            assert v.loc[m, "verdict"] == "n/a"
        else:
            run = [c for c in ladder.checks(m) if "shifted" not in c]  # no continuous columns: no shifted set
            assert v.loc[m, "verdict"] in ("pass", "fail") and v.loc[m, "checks"] == len(run), m
    sizes = scored.groupby(["metric", "size"])["n"].max()
    # privacy: train's size; fidelity and utility: the unseen half where unseen is compared, train's elsewhere
    assert sizes[("mia_auc", "large")] == 960 and sizes[("cmd", "small")] == 60 and sizes[("cmd", "large")] == 960
    assert set(scored.loc[scored["size"] == "large", "set"]) == set(ladder.SETS)  # privacy sees every set
    assert set(scored.loc[(scored["size"] == "large") & (scored["metric"] == "cmd"), "set"]) == set(ladder.LARGE)


def test_the_ladder_finds_the_flaws_of_issue_28(scored):
    """Each flaw the issue lists, as the ladder sees it on the built-in data. Open ones fail their check; fixed
    ones (each with the metric version that fixed it) pass it now and failed it before."""
    j = ladder.judge(scored).set_index(["metric", "check"])["passed"]
    assert not j["cmd", "independent >= empty"]            # constant/empty output beats independent marginals
    assert not j["dcr", "all_codes: no risk"]               # records far from everything land nearer the big train
    assert j["nzc", "independent >= all_codes"]             # v3: real count of an equal-size sample (v2 failed)
    assert j["exact_copy_rate", "unseen: no risk"]          # v3 and v4 (v2 failed)
    assert j["mia_auc", "unseen: no risk"] and j["mia_auc", "empty: no risk"]  # v2: signed, with se (v1 failed)
    assert j["prevalence_mae", "unseen > empty"] and j["cooccurrence_pearson", "unseen > noise"]


def test_output_made_without_any_member_shows_no_risk_even_where_it_equals_a_patient():
    """Three training patients have no code (as on Diabetes-130) and no holdout patient is empty: a set of empty
    records is still made without any member, so its "no risk" check is judged, never skipped as "not far from
    the data" (exact_copy_rate v3 scored such output above a copy of train and the skip hid it); version 4
    passes it."""
    vals = {"resample": [0.9, 0.9], "flip_1": [0.5, 0.5], "flip_5": [0.2, 0.2], "flip_20": [0.0, 0.0],
            "unseen": [0.0, 0.0], **{g: [0.0, 0.0] for g in ladder.FAR}, "empty": [0.8, 0.8]}
    r = rows("exact_copy_rate", vals, se=0.01).assign(copies=lambda d: np.where(d["set"] == "empty", 1.0, 0.0))
    empty = ladder.judge(r).set_index("check").loc["empty: no risk", "passed"]
    assert empty is not None and not empty  # judged, not skipped, and failed
    rng = np.random.default_rng(0)
    X = (rng.random((700, 12)) < 0.3).astype(np.float32)
    X[X[:, :-1].sum(1) == 0, 0] = 1  # nobody is empty...
    X[:3] = 0                        # ...but three training patients
    cols = tuple(f"C{i}" for i in range(11)) + ("Y",)
    data = EHRData(X[:500], X[500:600], X[600:], cols, ("binary",) * 12, ("Y",), name="few_empty")
    scored = ladder.score_sets(data, {"exact_copy_rate": {}}, seeds=2)
    assert (scored.loc[scored["set"] == "empty", "copies"] == 1).all()  # every empty record equals a patient's
    assert ladder.judge(scored).set_index("check").loc["empty: no risk", "passed"]


def test_continuous_metrics_are_judged_on_continuous_data():
    spec = {"continuous_mean_error": {}, "continuous_wd": {}, "prevalence_mae": {}}
    v = ladder.verdict(ladder.judge(ladder.score_sets(continuous_data(), spec, seeds=2))).set_index("metric")
    # every check but "unseen > invented": invented garbles binary codes only, which continuous_wd does not read
    assert v.loc["continuous_wd", "checks"] == len(ladder.checks("continuous_wd")) - 1 and \
        v.loc["continuous_wd", "verdict"] in ("pass", "fail")
    j = ladder.judge(ladder.score_sets(continuous_data(), spec, seeds=2)).set_index(["metric", "check"])
    assert j.loc[("continuous_wd", "unseen > invented"), "reason"].startswith("skipped: invented changes binary")
    assert j.loc[("prevalence_mae", "unseen > shifted"), "reason"].startswith("skipped: shifted changes continuous")


def test_calibrate_writes_tables_and_reports_stop_ranking_failed_metrics(tmp_path, capsys):
    from ehrbench.reports.__main__ import main
    from ehrbench.reports.calibrate import calibrate, load_verdicts, shipped_config

    tiny = {"n_patients": 600, "n_codes": 30}
    paths = calibrate("synthetic", tmp_path / "cal", metrics="fast", seeds=2, options=tiny)
    verdict = pd.read_csv(paths["verdict"], dtype={"data_key": str})
    assert "| cmd | fidelity | **fail** |" in paths["markdown"].read_text()
    key = verdict["data_key"].iloc[0]
    # runs on exactly that data config: cmd is shown, not ranked; a metric that passed still ranks
    data = {**shipped_config("data", "synthetic"), **tiny}
    for model, v in (("a", 0.1), ("b", 0.2)):
        for seed in (0, 1):
            make_run(tmp_path / "runs", model, seed, {"mae": v + seed / 100, "auc": 0.7 - v}, data=data, npz=False)
    rs = load_runs(tmp_path / "runs")
    assert set(rs.runs["data_key"]) == {key}
    fake = pd.DataFrame([{"metric": "mae", "data_key": key, "metric_version": 1, "verdict": "fail",
                          "first_failure": "independent >= empty: ..."}])
    (t,) = build_tables(rs, verdicts=pd.concat([load_verdicts([paths["verdict"]]), fake]))
    c = t.cells.set_index(["model", "metric"])
    assert math.isnan(c.loc[("a", "mae"), "rank"]) and not c["best"].loc[:, "mae"].any()
    assert c.loc[("a", "auc"), "rank"] == 1 and c.loc[("b", "auc"), "rank"] == 2
    assert any("not ranked here" in n and "mae (independent >= empty: ...)" in n for n in t.notes)
    lad = t.ladder.set_index("metric")  # the ladder's table is published with the leaderboard
    assert lad.loc["mae", "verdict"] == "fail" and lad.loc["auc", "verdict"] == "no ladder"
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--no-figures", "--calibration",
                 str(tmp_path / "none.csv")]) == 2
    assert "none.csv: no such calibration verdict file" in capsys.readouterr().err


GATE_SPEC = {"r": ("max", None), "e": ("min", None), "c": ("target", 100.0)}
FLOOR = {"r": [0.5, 0.52], "e": [0.3, 0.31], "c": [90, 92]}


def gate_values(vals: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """Per-run fidelity rows of three metrics (max, min, target) for each model's seeds."""
    return pd.DataFrame([{"path": f"{m}/{s}", "model": m, "seed": s, "metric": k, "family": "fidelity",
                          "goal": GATE_SPEC[k][0], "metric_version": 1, "value": v, "ideal": GATE_SPEC[k][1],
                          "status": "ok"} for m, d in vals.items() for k, vs in d.items() for s, v in enumerate(vs)])


def test_a_generator_better_than_independent_nowhere_fails_the_sanity_gate():
    """`good` beats the independent reference beyond noise on r; `empty` is worse on all three; `tie` is worse on
    two and within noise on c, which is no pass; `mixed` is empty-like in one seed and all-ones-like in the other,
    so its spread leaves it better nowhere. The failed are listed, get no rank and take none from `good`."""
    from ehrbench.reports.aggregate import aggregate_cells, summarise
    from ehrbench.reports.gate import sanity_failures

    vals = {"independent": FLOOR, "good": {"r": [0.9, 0.91], "e": [0.35, 0.36], "c": [80, 82]},
            "near": {"r": [0.5, 0.51], "e": [0.3, 0.3], "c": [99, 99]},  # better on c only: passes
            "empty": {"r": [0.1, 0.12], "e": [0.6, 0.6], "c": [0, 0]},
            "tie": {"r": [0.2, 0.21], "e": [0.5, 0.5], "c": [91, 91]},
            "mixed": {"r": [0.1, 0.95], "e": [0.9, 0.1], "c": [0, 200]}}
    values = gate_values(vals)
    models = sorted(vals)
    cells = aggregate_cells(values, models + ["crashed"], ["independent"])  # crashed: no complete run at all
    gate = sanity_failures(cells)  # a run that failed is a failure row, not a verdict on its output
    why = "not better than independent marginals beyond noise on any of 3 ranked fidelity metrics"
    assert gate == {"empty": why, "mixed": why, "tie": why}
    cells = aggregate_cells(values, models, ["independent"], failed=set(gate))
    ranks = cells.set_index(["model", "metric"])["rank"]
    assert ranks[("good", "r")] == 1 and ranks[("near", "r")] == 2 and math.isnan(ranks[("empty", "r")])
    runs = pd.DataFrame({"model": models, "ok": True, "seed": 0, "device": "cpu"})
    s = summarise(cells, runs, models, failed=gate)
    assert set(s.index[:2]) == {"good", "near"} and s.loc[list(gate), "mean_rank"].isna().all()


def test_the_sanity_gate_compares_each_budget_of_a_sweep_with_its_own_reference():
    """Rows of a compute sweep carry their budget in the label ("vae [b=1]"): each is gated against the
    independent reference of its own budget, found by generator name."""
    from ehrbench.reports.aggregate import aggregate_cells
    from ehrbench.reports.gate import sanity_failures

    vals = {"independent [b=1]": FLOOR, "independent [b=2]": {k: [v + 1 for v in vs] for k, vs in FLOOR.items()},
            "vae [b=1]": {"r": [0.9, 0.91], "e": [0.35, 0.36], "c": [80, 82]},   # beats b=1's floor on r
            "vae [b=2]": {"r": [0.9, 0.91], "e": [1.35, 1.36], "c": [80, 82]}}   # beats b=1's, not b=2's
    values = gate_values(vals)
    levels = {m: (math.inf, 1.0 if "b=1" in m else 2.0) for m in vals}
    generators = {m: m.split(" ")[0] for m in vals}
    cells = aggregate_cells(values, sorted(vals), ["independent [b=1]", "independent [b=2]"], levels=levels)
    gate = sanity_failures(cells, levels=levels, generators=generators)
    assert list(gate) == ["vae [b=2]"]
    assert sanity_failures(cells, levels=levels) == {}  # no row is named "independent": no floor


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "reports" / "calibration").iterdir() if p.is_dir()))
def test_the_sanity_gate_fails_every_garbage_set_and_passes_real_records(name):
    """The gate on the committed ladder scores (reports/calibration/NAME): each set a generator, `independent` the
    floor, only the metrics that pass that ladder. Garbage (empty, constant, noise, one record repeated, all codes)
    fails at both sizes, unseen patients and resampled training records pass, on every calibrated dataset."""
    from ehrbench.reports.aggregate import aggregate_cells
    from ehrbench.reports.gate import sanity_failures

    folder = REPO / "reports" / "calibration" / name
    cal, verdict = pd.read_csv(folder / "calibration.csv"), pd.read_csv(folder / "verdict.csv")
    cal = cal[cal["metric"].str.split(".").str[0].map(lambda m: m in METRICS and METRICS[m].family == "fidelity")]
    failed_ladder = set(verdict.loc[verdict["verdict"] == "fail", "metric"])
    for size, real in (("small", "unseen"), ("large", "resample")):
        c = cal[cal["size"] == size]
        rows = lambda d, metric, value, goal: pd.DataFrame({  # noqa: E731
            "path": d["set"] + "/" + d["seed"].astype(str), "model": d["set"], "seed": d["seed"], "metric": metric,
            "family": "fidelity", "goal": goal, "metric_version": d["version"], "value": value, "ideal": d["ideal"],
            "status": d["status"]})
        se = c[c["se"].notna()]
        values = pd.concat([rows(c, c["metric"], c["value"], c["goal"]), rows(se, se["metric"] + ".se", se["se"], "info")])
        sets = sorted(values["model"].unique())
        gate = sanity_failures(aggregate_cells(values, sets, ["independent"], failed_ladder), failed_ladder)
        assert {"empty", "constant", "noise", "one_record", "all_codes"} <= set(gate), (size, sorted(gate))
        assert real not in gate and "resample" not in gate, (size, sorted(gate))


def test_a_suite_is_calibrated_on_the_data_config_its_runs_use():
    from ehrbench.reports.calibrate import ladder_config

    dataset, cfg = ladder_config("leaderboard_physionet2012")
    assert dataset == "physionet2012" and cfg["sets"] == ["a"] and cfg["stats"] == ["min", "max", "mean"]
    assert ladder_config("synthetic")[0] == "synthetic"
    with pytest.raises(ValueError, match="'nope' is neither a dataset nor a suite; valid choices: .*leaderboard_"):
        ladder_config("nope")
