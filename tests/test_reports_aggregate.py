"""Aggregation and ranking on hand-made result rows: max/min goals, ties, NaN, single seed, profiles, versions."""
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from ehrbench.reports.aggregate import PROFILES, aggregate_cells, build_tables, parse_profile, summarise
from ehrbench.reports.load import RESULT_COLUMNS, RUN_COLUMNS, RunSet
from ehrbench.reports.ranking import best_mask, rank_metric, run_levels


def rows(model, metric, values, goal="max", family="fidelity", version=1, errors=0, se=0.0):
    """Result rows of one cell; se: each row's standard error as a `metric.se` row (0: exact; None: no se rows)."""
    out = [{"model": model, "seed": s, "metric": metric, "value": v, "status": "ok", "goal": goal, "family": family,
            "metric_version": version} for s, v in enumerate(values)]
    if se is not None and goal != "info":
        out += [{**r, "metric": f"{metric}.se", "value": se, "goal": "info"} for r in out]
    out += [{"model": model, "seed": len(values) + i, "metric": metric, "value": math.nan, "status": "error: boom",
             "goal": goal, "family": family, "metric_version": version} for i in range(errors)]
    return out


def cell(cells, model, metric):
    return cells[(cells["model"] == model) & (cells["metric"] == metric)].iloc[0]


def test_rank_max_min_ties_and_nan():
    m = pd.Series({"a": 0.9, "b": 0.5, "c": 0.9, "d": np.nan})
    assert rank_metric(m, "max").to_dict() == {"a": 1.5, "b": 3.0, "c": 1.5, "d": 4.0}
    assert rank_metric(m, "min").to_dict() == {"a": 2.5, "b": 1.0, "c": 2.5, "d": 4.0}
    two_missing = pd.Series({"a": 1.0, "b": np.nan, "c": np.nan})
    assert rank_metric(two_missing, "min").to_dict() == {"a": 1.0, "b": 2.5, "c": 2.5}  # share places 2 and 3
    assert rank_metric(pd.Series({"a": np.nan}), "max").isna().all()
    assert rank_metric(pd.Series({"a": 1.0}), "info").isna().all()
    assert best_mask(m, "max").to_dict() == {"a": True, "b": False, "c": True, "d": False}
    assert best_mask(m, "min").to_dict() == {"a": False, "b": True, "c": False, "d": False}
    assert not best_mask(m, "info").any()


def test_cells_mean_std_n_match_statistics_module():
    v = pd.DataFrame(rows("x", "auc", [0.7, 0.8, 0.75]) + rows("y", "auc", [0.6], errors=2)
                     + rows("x", "mae", [0.1, 0.3], goal="min") + rows("y", "mae", [0.2, 0.2], goal="min"))
    c = aggregate_cells(v, ["x", "y"])
    x = cell(c, "x", "auc")
    assert x["mean"] == pytest.approx(statistics.mean([0.7, 0.8, 0.75]))
    assert x["std"] == pytest.approx(statistics.stdev([0.7, 0.8, 0.75]))
    assert (x["n"], x["n_error"], x["rank"], bool(x["best"])) == (3, 0, 1.0, True)
    y = cell(c, "y", "auc")
    assert (y["mean"], y["n"], y["n_error"]) == (0.6, 1, 2) and math.isnan(y["std"])  # single seed: no std
    assert cell(c, "x", "mae")["mean"] == pytest.approx(0.2) and cell(c, "y", "mae")["mean"] == pytest.approx(0.2)
    assert cell(c, "x", "mae")["rank"] == cell(c, "y", "mae")["rank"] == 1.5  # exact tie on a min metric
    assert cell(c, "x", "mae")["best"] and cell(c, "y", "mae")["best"]


def test_failed_cell_ranks_last_and_info_is_never_ranked():
    v = pd.DataFrame(rows("good", "r", [0.2]) + rows("bad", "r", [], errors=1) + rows("mid", "r", [0.1])
                     + rows("good", "r.real", [5.0], goal="info") + rows("bad", "r.real", [7.0], goal="info"))
    c = aggregate_cells(v, ["bad", "good", "mid", "absent"])
    assert cell(c, "good", "r")["rank"] == 1 and cell(c, "mid", "r")["rank"] == 2
    assert cell(c, "bad", "r")["rank"] == cell(c, "absent", "r")["rank"] == 3.5  # a failure never helps
    assert cell(c, "bad", "r")["n"] == 0 and cell(c, "bad", "r")["n_error"] == 1
    info = c[c["metric"] == "r.real"]
    assert info["rank"].isna().all() and not info["best"].any()


def _runs(models, seeds=(0,)):
    recs = [{**{k: None for k in RUN_COLUMNS}, "path": f"t/d/{m}/seed_{s}", "tag": "t", "data": "d", "model": m,
             "seed": s, "status": "ok", "ok": True, "data_key": "k", "fit_seconds": 10.0 * (i + 1),
             "n_params": 100 * i, "device": "cpu"} for i, m in enumerate(models) for s in seeds]
    return pd.DataFrame(recs, columns=RUN_COLUMNS)


def test_family_ranks_profiles_and_order():
    # a: best fidelity (2 metrics), worst privacy; b: the reverse; utility tied.
    v = pd.DataFrame(rows("a", "f1", [0.9]) + rows("b", "f1", [0.1]) + rows("a", "f2", [0.1], goal="min")
                     + rows("b", "f2", [0.5], goal="min") + rows("a", "p", [0.9], goal="min", family="privacy")
                     + rows("b", "p", [0.1], goal="min", family="privacy") + rows("a", "u", [0.5], family="utility")
                     + rows("b", "u", [0.5], family="utility"))
    c = aggregate_cells(v, ["a", "b"])
    s = summarise(c, _runs(["a", "b"]), ["a", "b"])
    assert s.loc["a", "rank_fidelity"] == 1 and s.loc["b", "rank_fidelity"] == 2
    assert s.loc["a", "rank_privacy"] == 2 and s.loc["a", "rank_utility"] == 1.5
    # families weigh equally: two fidelity metrics do not outvote one privacy metric
    assert s.loc["a", "mean_rank"] == s.loc["b", "mean_rank"] == pytest.approx((1 + 1.5 + 2) / 3)
    w = PROFILES["privacy_first"]
    expect_a = (w["fidelity"] * 1 + w["utility"] * 1.5 + w["privacy"] * 2) / sum(w.values())
    assert s.loc["a", "profile_privacy_first"] == pytest.approx(expect_a)
    assert s.loc["a", "rank_privacy_first"] == 2 and s.loc["b", "rank_privacy_first"] == 1
    assert s.loc["a", "rank_utility_first"] == s.loc["b", "rank_utility_first"] == 1.5  # symmetric: a tie
    assert s.loc["b", "fit_seconds"] == 20.0 and s.loc["a", "device"] == "cpu" and s.loc["a", "runs_ok"] == 1


def test_reference_metric_with_goal_info_stays_out_of_family_ranks():
    """trtr_auroc (goal info, no dot in its name) is shown but never ranked; only tstr_auroc sets utility ranks."""
    v = pd.DataFrame(rows("a", "tstr_auroc", [0.7], family="utility") + rows("b", "tstr_auroc", [0.6], family="utility")
                     + rows("a", "trtr_auroc", [0.8], goal="info", family="utility")
                     + rows("b", "trtr_auroc", [0.8], goal="info", family="utility"))
    c = aggregate_cells(v, ["a", "b"])
    ref = c[c["metric"] == "trtr_auroc"]
    assert ref["rank"].isna().all() and not ref["best"].any() and (ref["mean"] == 0.8).all()
    s = summarise(c, _runs(["a", "b"]), ["a", "b"])
    assert (s.loc["a", "rank_utility"], s.loc["b", "rank_utility"]) == (1, 2)  # not pulled to 1.5 by the tie
    assert (s.loc["a", "mean_rank"], s.loc["b", "mean_rank"]) == (1, 2)


def test_profile_ignores_missing_family():
    v = pd.DataFrame(rows("a", "f", [0.9]) + rows("b", "f", [0.1]))
    s = summarise(aggregate_cells(v, ["a", "b"]), _runs(["a", "b"]), ["a", "b"])
    assert math.isnan(s.loc["a", "rank_privacy"])
    assert s.loc["a", "profile_balanced"] == 1.0 and s.loc["b", "profile_privacy_first"] == 2.0


def _runset(results, runs):
    res = pd.DataFrame([{**{k: None for k in RESULT_COLUMNS}, **r} for r in results], columns=RESULT_COLUMNS)
    return RunSet(None, runs, res, pd.DataFrame())


def test_metric_versions_and_datasets_never_share_a_table():
    runs = _runs(["a", "b"], seeds=(0, 1))
    runs.loc[runs["model"] == "b", "data_key"] = "k"
    other = _runs(["a"]).assign(data="e", path="t/e/a/seed_0")
    runs = pd.concat([runs, other], ignore_index=True)
    res = []
    for _, r in runs.iterrows():
        version = 2 if (r["model"] == "a" and r["seed"] == 1) else 1  # one run computed metric m with version 2
        res.append({"path": r["path"], "tag": "t", "data": r["data"], "model": r["model"], "seed": r["seed"],
                    "metric": "m", "family": "fidelity", "goal": "max", "metric_version": version, "value": 1.0,
                    "status": "ok", "data_key": "k"})
    tables = build_tables(_runset(res, runs))
    labels = [t.label for t in tables]
    assert labels == ["t / d [m v1]", "t / d [m v2]", "t / e"]
    v1, v2, e = tables
    assert set(v1.values["path"]) == {"t/d/a/seed_0", "t/d/b/seed_0", "t/d/b/seed_1"}
    assert set(v2.values["path"]) == {"t/d/a/seed_1"} and v1.notes and "versions differ" in v1.notes[0]
    assert e.models == ["a"] and [n[:32] for n in e.notes] == ["not ranked here: no standard err",  # one seed
                                                               "one generator only: there is not"]


def test_two_data_configs_are_split():
    runs = _runs(["a"], seeds=(0, 1))
    runs.loc[1, "data_key"] = "other"
    tables = build_tables(_runset([], runs))
    assert [t.label for t in tables] == ["t / d [data config k]", "t / d [data config other]"]
    assert all(any("different data configs" in n for n in t.notes) for t in tables)


def test_parse_profile():
    assert parse_profile("edu=fidelity:0.5,utility:0.5") == ("edu", {"fidelity": 0.5, "utility": 0.5})
    for bad in ("edu", "edu=speed:1", "edu=fidelity:-1", "edu=fidelity"):
        with pytest.raises(ValueError, match="name=fidelity"):
            parse_profile(bad)


def test_target_metric_ranks_by_distance_from_the_ideal():
    """nzc-like count with ideal 961: 972 (11 invented) must not beat 958 (3 lost); version 1 ranked max."""
    m = pd.Series({"ehrdiff": 972.0, "vae": 958.0, "gan": 900.0})
    ideal = pd.Series(961.0, index=m.index)
    assert rank_metric(m, "target", ideal).to_dict() == {"ehrdiff": 2.0, "vae": 1.0, "gan": 3.0}
    assert best_mask(m, "target", ideal).to_dict() == {"ehrdiff": False, "vae": True, "gan": False}
    assert rank_metric(m, "target").isna().all()  # no ideal recorded: not ranked rather than guessed


def test_signed_privacy_scores_clip_at_the_ideal_and_tie_within_noise():
    """nnaa-like: VAE -0.006 must not outrank EHRDiff +0.004 when both lie within two standard errors of 0, and
    a clearly positive value ranks last; without se the negative value still only ties with the ideal."""
    m = pd.Series({"vae": -0.006, "ehrdiff": 0.004, "leaky": 0.2})
    noise = pd.Series({"vae": 0.005, "ehrdiff": 0.005, "leaky": 0.005})
    assert rank_metric(m, "min", 0.0, noise).to_dict() == {"vae": 1.5, "ehrdiff": 1.5, "leaky": 3.0}
    assert rank_metric(m, "min", 0.0).to_dict() == {"vae": 1.0, "ehrdiff": 2.0, "leaky": 3.0}
    assert rank_metric(pd.Series({"a": -0.3, "b": -0.01}), "min", 0.0).to_dict() == {"a": 1.5, "b": 1.5}
    assert rank_metric(m, "min").to_dict() == {"vae": 1.0, "ehrdiff": 2.0, "leaky": 3.0}  # no ideal: plain min


def test_cells_take_ideal_and_tolerance_from_the_rows():
    v = pd.DataFrame(rows("a", "nnaa", [-0.006, -0.004], goal="min", family="privacy", se=0.01)
                     + rows("b", "nnaa", [0.004, 0.002], goal="min", family="privacy", se=0.01))
    v["ideal"] = np.where(v["metric"] == "nnaa", 0.0, np.nan)
    c = aggregate_cells(v, ["a", "b"])
    assert cell(c, "a", "nnaa")["tol"] == pytest.approx(2 * math.sqrt(0.01 ** 2 * 2) / 2)
    assert cell(c, "a", "nnaa")["rank"] == cell(c, "b", "nnaa")["rank"] == 1.5


def test_a_noisier_cell_far_from_the_ideal_gains_nothing_from_its_noise():
    """Detection-like target 0.5, one seed each: 0.992 (se 0.0005) and 0.987 (se 0.0025) differ by 0.005, inside
    2 sqrt(0.0005^2 + 0.0025^2) = 0.0051, so they tie; taking each cell's own tolerance (2 se) off its key made the
    noisier cell win (0.482 + 0.0051 < 0.491)."""
    v = pd.DataFrame(rows("a", "det", [0.992], goal="target", se=0.0005)
                     + rows("b", "det", [0.987], goal="target", se=0.0025))
    v["ideal"] = np.where(v["metric"] == "det", 0.5, np.nan)
    c = aggregate_cells(v, ["a", "b"])
    assert cell(c, "a", "det")["rank"] == cell(c, "b", "det")["rank"] == 1.5
    v.loc[(v["model"] == "b") & (v["metric"] == "det"), "value"] = 0.980  # 0.012 apart: beyond noise
    c = aggregate_cells(v, ["a", "b"])
    assert (cell(c, "b", "det")["rank"], cell(c, "a", "det")["rank"]) == (1.0, 2.0)


def test_references_are_shown_but_never_ranked():
    """real (a resample of train) and independent are reference points: they get values, no rank, no bold,
    no profile, and they do not push any generator down."""
    v = pd.DataFrame(rows("real", "r", [0.99]) + rows("independent", "r", [0.95]) + rows("gen", "r", [0.9])
                     + rows("gan", "r", [0.8]) + rows("real", "p", [0.9], goal="min", family="privacy")
                     + rows("gen", "p", [0.1], goal="min", family="privacy")
                     + rows("gan", "p", [0.2], goal="min", family="privacy"))
    models = ["gan", "gen", "independent", "real"]
    c = aggregate_cells(v, models, ["independent", "real"])
    assert cell(c, "gen", "r")["rank"] == 1 and cell(c, "gan", "r")["rank"] == 2 and cell(c, "gen", "r")["best"]
    assert math.isnan(cell(c, "real", "r")["rank"]) and not cell(c, "real", "r")["best"]
    runs = pd.DataFrame({"model": models, "ok": True, "seed": 0, "device": "cpu",
                         **{k: 1.0 for k in ("fit_seconds", "sample_seconds", "peak_memory_mb", "n_params")}})
    s = summarise(c, runs, models)
    assert list(s.index) == ["gen", "gan", "independent", "real"]  # generators by rank, then references
    assert s.loc["gen", "mean_rank"] == 1 and math.isnan(s.loc["real", "mean_rank"])
    assert s.loc["real", "reference"] and not s.loc["gen", "reference"]
    assert math.isnan(s.loc["real", "profile_balanced"])


def test_private_rows_are_ranked_against_the_same_target_epsilon_only():
    """vae (ε=10) beats everything on the metric, yet within ε=1 ehrdiff (ε=1) is first: levels never mix."""
    models = ["ehrdiff (ε=1)", "vae (ε=1)", "ehrdiff (ε=10)", "vae (ε=10)", "ehrdiff", "vae"]
    scores = {"ehrdiff (ε=1)": 0.6, "vae (ε=1)": 0.5, "ehrdiff (ε=10)": 0.7, "vae (ε=10)": 0.95, "ehrdiff": 0.8,
              "vae": 0.9}
    v = pd.DataFrame([r for m in models for r in rows(m, "auc", [scores[m]])])
    eps = {"ehrdiff (ε=1)": 1.0, "vae (ε=1)": 1.0, "ehrdiff (ε=10)": 10.0, "vae (ε=10)": 10.0}
    runs = _runs(models).assign(target_epsilon=lambda r: r["model"].map(eps).fillna(np.inf))
    c = aggregate_cells(v, models, levels=run_levels(runs))  # the level is the runs' field, not the label's text
    assert {m: cell(c, m, "auc")["rank"] for m in models} == {
        "ehrdiff (ε=1)": 1, "vae (ε=1)": 2, "ehrdiff (ε=10)": 2, "vae (ε=10)": 1, "ehrdiff": 2, "vae": 1}
    assert sorted(m for m in models if cell(c, m, "auc")["best"]) == ["ehrdiff (ε=1)", "vae", "vae (ε=10)"]
    s = summarise(c, runs, models)
    assert list(s.index) == ["ehrdiff (ε=1)", "vae (ε=1)", "vae (ε=10)", "ehrdiff (ε=10)", "vae", "ehrdiff"]
    assert s.loc["vae (ε=10)", "rank_balanced"] == 1 and s.loc["ehrdiff (ε=1)", "rank_balanced"] == 1


def test_differences_inside_the_noise_are_ties_and_not_best_marks():
    """a 0.80 ± se 0.01, b 0.79 ± 0.01, c 0.70 ± 0.01: a and b differ by 0.01 < 2 sqrt(2) 0.01, so they tie;
    both beat c (0.09 apart). Non-transitive case: x-y and y-z tie, x beats z: y sits between them."""
    means, noise = pd.Series({"a": 0.80, "b": 0.79, "c": 0.70}), pd.Series({"a": 0.01, "b": 0.01, "c": 0.01})
    assert rank_metric(means, "max", noise=noise).to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    assert best_mask(means, "max", noise=noise).to_dict() == {"a": True, "b": True, "c": False}
    assert rank_metric(means, "max").to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0}  # exact: a alone is first
    chain = pd.Series({"x": 0.0, "y": 0.025, "z": 0.05})
    r = rank_metric(chain, "min", noise=pd.Series(0.01, index=chain.index))
    assert r.to_dict() == {"x": 1.5, "y": 2.0, "z": 2.5} and r.sum() == 6  # 1 + beaten-by + (ties) / 2


def test_cells_take_noise_from_seeds_or_se_and_leave_unknown_noise_unranked():
    """noise = max(sd over seeds / sqrt(n), the rows' se / sqrt(n)); one seed without se rows: unranked."""
    v = pd.DataFrame(rows("a", "auc", [0.70, 0.74], se=None) + rows("b", "auc", [0.60, 0.62], se=None)
                     + rows("a", "mae", [0.1], goal="min", se=None) + rows("b", "mae", [0.3], goal="min", se=None))
    c = aggregate_cells(v, ["a", "b"])
    assert cell(c, "a", "auc")["noise"] == pytest.approx(statistics.stdev([0.70, 0.74]) / math.sqrt(2))
    assert cell(c, "a", "auc")["rank"] == 1 and cell(c, "a", "auc")["best"]
    mae = c[c["metric"] == "mae"]
    assert mae["rank"].isna().all() and not mae["best"].any() and mae["no_se"].all()
    (t,) = build_tables(_runset([{**r, "path": f"t/d/{r['model']}/seed_{r['seed']}", "tag": "t", "data": "d",
                                  "data_key": "k"} for r in v.to_dict("records")], _runs(["a", "b"], seeds=(0, 1))))
    assert any(n.startswith("not ranked here: no standard error") and "mae (a, b)" in n for n in t.notes)


def test_a_cell_of_unknown_noise_is_left_out_and_the_others_still_rank():
    """c has one seed and no se on auc: c is not ranked there, a and b are (a beats b beyond their noise)."""
    v = pd.DataFrame(rows("a", "auc", [0.80, 0.81], se=None) + rows("b", "auc", [0.60, 0.61], se=None)
                     + rows("c", "auc", [0.99], se=None))
    c = aggregate_cells(v, ["a", "b", "c"])
    assert cell(c, "a", "auc")["rank"] == 1 and cell(c, "b", "auc")["rank"] == 2 and cell(c, "a", "auc")["best"]
    assert math.isnan(cell(c, "c", "auc")["rank"]) and cell(c, "c", "auc")["no_se"] and not cell(c, "c", "auc")["best"]


def test_near_duplicate_metrics_count_once_in_their_family():
    """prevalence r, rho and MAE are one concept: a model best on those three but worst on co-occurrence ties."""
    v = pd.DataFrame([r for m, (good, bad) in {"a": (0.9, 0.1), "b": (0.1, 0.9)}.items()
                      for r in rows(m, "prevalence_pearson", [good]) + rows(m, "prevalence_spearman", [good])
                      + rows(m, "prevalence_mae", [1 - good], goal="min") + rows(m, "cooccurrence_pearson", [bad])])
    c = aggregate_cells(v, ["a", "b"])
    assert set(c.loc[c["metric"].str.startswith("prevalence") & (c["goal"] != "info"), "concept"]) == {"code prevalence"}
    s = summarise(c, _runs(["a", "b"]), ["a", "b"])
    assert s.loc["a", "rank_fidelity"] == s.loc["b", "rank_fidelity"] == 1.5
