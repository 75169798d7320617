"""A leaderboard's first screen: intervals and differences against scipy, the regime, the verdict, compact tables."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ehrbench.reports import build_tables, load_runs, write_report
from ehrbench.reports.headline import compact, headline_metrics, interval, regime, verdict
from ehrbench.reports.pairwise import difference, pairwise
from tests.test_reports_load import make_run

A = {"auc": [0.70, 0.72, 0.71], "pearson": [0.90, 0.91, 0.92], "risk": [0.01, 0.02, 0.00]}
B = {"auc": [0.60, 0.65, 0.62], "pearson": [0.89, 0.92, 0.90], "risk": [0.02, 0.00, 0.01]}


def _set(run_dir, **fields):
    f = run_dir / "run.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **fields}))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """ehrdiff (A) leads vae (B) on utility and ties elsewhere; real is a reference; medgan never finished;
    independent has two seeds only."""
    root = tmp_path_factory.mktemp("runs")
    for model, vals, share in (("ehrdiff", A, 0.0018), ("vae", B, 0.091)):
        for seed in range(3):
            d = make_run(root, model, seed, {k: v[seed] for k, v in vals.items()}, se=0.0, npz=False)
            _set(d, budget="compute", budget_reference="500 x ehrdiff", fraction_of_paper=share)
    for seed in range(3):
        make_run(root, "real", seed, {"auc": 0.8, "pearson": 1.0, "risk": 0.3 + 0.01 * seed}, se=0.0, npz=False)
    for seed in range(2):
        make_run(root, "independent", seed, {"auc": 0.5, "pearson": 0.5 + 0.01 * seed, "risk": 0.0}, se=0.0, npz=False)
    make_run(root, "medgan", 0, {"auc": 0.4}, status="failed: RuntimeError: nan loss", npz=False)
    return root, build_tables(load_runs(root))[0]


def test_interval_is_the_t_interval_over_seeds_and_normal_for_one():
    assert interval(0.7, 0.01, 3) == pytest.approx(stats.t.interval(0.95, 2, loc=0.7, scale=0.01))
    assert interval(0.7, 0.01, 1) == pytest.approx(stats.norm.interval(0.95, loc=0.7, scale=0.01))
    assert all(np.isnan(interval(0.7, float("nan"), 3)))


def test_difference_is_welchs_interval(table):
    _, t = table
    d, lo, hi = difference(t, "auc", "ehrdiff", "vae")
    ci = stats.ttest_ind(A["auc"], B["auc"], equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(A["auc"]) - np.mean(B["auc"]))
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    d, lo, hi = difference(t, "pearson", "vae", "ehrdiff")  # direction: > 0 when the first is better
    assert d == pytest.approx(np.mean(B["pearson"]) - np.mean(A["pearson"])) and lo < 0 < hi


def test_verdict_names_the_lead_only_where_the_interval_excludes_zero(table):
    _, t = table
    heads = headline_metrics(t)
    assert heads == {"fidelity": "pearson", "utility": "auc", "privacy": "risk"}  # none registered: first ranked
    v = verdict(t, heads)
    assert v.startswith("First by mean rank ehrdiff (")
    d = np.mean(A["auc"]) - np.mean(B["auc"])
    assert f"it beats vae on utility (auc by {d:.3g}, 95 % interval [" in v and "ties on fidelity and privacy" in v
    assert v.endswith("Not ranked: medgan (no complete run (failed)).")
    from ehrbench.reports.pairwise import lead_of

    won, tied, lost = lead_of(t, heads, "vae", "ehrdiff")  # the other way round, the lead is a loss, and said
    assert won == [] and tied == ["fidelity", "privacy"] and lost[0].startswith(f"utility (auc by {d:.3g}, 95 % interval [")


def test_pairwise_verdicts_state_a_difference_only_where_its_interval_excludes_zero(table, sweep):
    _, t = table
    p = pairwise(t, headline_metrics(t))
    assert list(p.index) == ["ehrdiff vs vae"] and "level" not in p.columns  # one level: no level column
    ci = stats.ttest_ind(A["auc"], B["auc"], equal_var=False).confidence_interval(0.95)
    d = np.mean(A["auc"]) - np.mean(B["auc"])
    assert p.loc["ehrdiff vs vae", "utility: auc"] == f"better {d:+.3g} [{ci.low:.3g}, {ci.high:.3g}]"
    assert p.loc["ehrdiff vs vae", "fidelity: pearson"].startswith("tie ")
    _, s = sweep  # a sweep: one pair per budget, the budget named
    p = pairwise(s, headline_metrics(s))
    assert list(p.index) == ["vae vs gan", "vae vs creep"] * 4 and p["level"].iloc[-1] == "compute 54 x ehrdiff"
    gan = p.loc["vae vs gan", "utility: auc"]
    assert gan.iloc[0].startswith("better +0.2 [") and gan.iloc[-1].startswith("better +0.1 [")


def test_compact_tables_put_references_and_unranked_generators_apart(table):
    _, t = table
    tabs = compact(t, headline_metrics(t))
    ranked, best = tabs["ranked"]
    assert list(ranked.index) == ["ehrdiff", "vae"] and list(tabs["references"][0].index) == ["independent", "real"]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(A["auc"]), scale=np.std(A["auc"], ddof=1) / np.sqrt(3))
    assert ranked.loc["ehrdiff", "utility: auc ↑"] == f"{np.mean(A['auc']):.3f} [{lo:.3f}, {hi:.3f}]"
    assert best.loc["ehrdiff", "utility: auc ↑"] and not best.loc["vae", "utility: auc ↑"]
    assert tabs["references"][0].loc["independent", "seeds"] == "2†"  # fewer than 3 seeds are marked
    assert tabs["not ranked"][0].loc["medgan", "why"] == "no complete run (failed)"


def test_regime_says_how_far_each_schedule_went(table):
    _, t = table
    r = regime(t)
    assert r.startswith("compute 500 x ehrdiff: EHRDiff at 0.18 % of its paper schedule")
    assert "ehrdiff 0.18 %, vae 9.1 %" in r and "Regime: early training" in r


def test_the_page_opens_with_the_first_screen(table, tmp_path):
    root, _ = table
    md = write_report(root, tmp_path, figures=False)["markdown"].read_text()
    first, details = md.split("## Details", 1)
    assert "**Question.**" in first and "**Budget.**" in first and "**Verdict.**" in first
    assert "**References (reference points, never ranked)**" in first and "### Summary" in details


SWEEP = (("vae", lambda k: [0.5, 0.7, 0.7, 0.7][k], 0.001), ("gan", lambda k: 0.3 + 0.1 * k, 0.001),
         ("creep", lambda k: 0.2 + 0.06 * k, 0.05))


def make_sweep(root, gens=SWEEP):
    """Runs of (generator, auc at budget k, spread over seeds) at four budgets, three seeds each; an auc of None is
    an error in every seed (a constant synthetic label: no classifier can be trained)."""
    for k, steps in enumerate((2, 6, 18, 54)):
        for gen, auc, sd in gens:
            for seed in range(3):
                v = 0.5 if auc(k) is None else auc(k) + sd * (seed - 1)
                a = "error: ValueError: the synthetic label column is constant" if auc(k) is None else v
                d = make_run(root, f"{gen}_r{steps}", seed, {"auc": a, "pearson": v, "risk": 0.0}, se=0.0, npz=False)
                config = json.loads((d / "run.json").read_text())["config"]
                _set(d, model=gen, budget="compute", budget_reference=f"{steps} x ehrdiff", fraction_of_paper=0.01,
                     train_flops=1e9 * steps * (1 + 0.01 * (gen == "gan")), settings_hash=f"{gen}{steps}",
                     config={**config, "model": {"name": gen}, "trainer": {"reference_steps": steps}})
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A compute sweep as the suites lay it out: vae and gan at four budgets (trainer.reference_steps 2, 6, 18, 54:
    rows "vae [trainer.reference_steps=2]", ...), three seeds each; vae stops improving after its second budget,
    gan keeps improving, creep rises by less than its noise per budget but beyond it over two."""
    root = make_sweep(tmp_path_factory.mktemp("sweep"))
    d = make_run(root, "vae_r54", 3, status="running", npz=False)  # unfinished: no budget recorded yet
    config = json.loads((d / "run.json").read_text())["config"]
    _set(d, model="vae", settings_hash="vae54", config={**config, "model": {"name": "vae"}, "trainer": {"reference_steps": 54}})
    return root, build_tables(load_runs(root))[0]


def test_a_compute_sweep_ranks_within_each_budget_and_finds_the_plateau(sweep):
    from ehrbench.reports.headline import plateaus

    _, t = sweep
    ranks = t.cells[t.cells["metric"] == "auc"].set_index("model")["rank"]
    assert ranks.to_dict() == {f"{g} [trainer.reference_steps={k}]": r for k in (2, 6, 18, 54)
                               for g, r in (("vae", 1.0), ("gan", 2.0), ("creep", 3.0))}  # each budget on its own
    assert any("same target ε and training budget only" in n for n in t.notes)
    from ehrbench.reports.ranking import level_names

    assert sorted(level_names(t.runs).values()) == sorted(f"compute {k} x ehrdiff" for k in (2, 6, 18, 54))
    p = plateaus(t, headline_metrics(t))
    assert p.loc["vae", "plateau from"] == "6e+09 FLOPs" and p.loc["vae", "budgets"] == 4
    assert p.loc["gan", "plateau from"].startswith("not reached")
    assert p.loc["creep", "plateau from"].startswith("not reached")  # each step within noise (0.06 < 0.082), two not
    # each generator's headline scores where it converged, else at its largest budget
    assert p.loc["vae", "scores at"] == "plateau, 1 % of its schedule" and p.loc["vae", "utility: auc"].startswith("0.700 [")
    assert p.loc["gan", "scores at"] == "largest budget, 1 % of its schedule"
    assert p.loc["gan", "utility: auc"].startswith("0.600 [")
    # within a budget's sentence the rows go by their model names (the budget names the setting they share)
    assert verdict(t, headline_metrics(t)).startswith("At compute 2 x ehrdiff: first by mean rank vae (1.33; gan 2.00,"
                                                      " creep 2.67); it beats gan on fidelity")


def test_a_score_undefined_in_every_seed_at_every_budget_is_unchanged_but_not_at_one(tmp_path):
    from ehrbench.reports.headline import plateaus

    root = make_sweep(tmp_path, (("const", lambda k: None, 0.0), ("late", lambda k: [None, 0.6, 0.6, 0.6][k], 0.0),
                                 ("gap", lambda k: [0.6, 0.6, None, 0.6][k], 0.0)))
    t = build_tables(load_runs(root))[0]
    p = plateaus(t, headline_metrics(t))
    assert p.loc["const", "plateau from"] == "2e+09 FLOPs" and p.loc["const", "utility: auc"] == "—"
    assert p.loc["late", "plateau from"] == "6e+09 FLOPs"  # undefined at the first budget only: that one changed
    assert p.loc["gap", "plateau from"].startswith("not reached")


def test_a_run_that_did_not_complete_stays_a_visible_point(sweep, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from ehrbench.reports.sweeps import fig_compute

    _, t = sweep
    seen, real = [], Axes.scatter
    monkeypatch.setattr(Axes, "scatter", lambda self, x, y, **kw: seen.append((list(x), kw.get("label")))
                        or real(self, x, y, **kw))
    (info,), _ = fig_compute(t, tmp_path)
    assert len(seen) == 3  # one cross per family panel: vae_r54 seed 3, still running, at its budget's FLOPs
    assert all(x == [pytest.approx(54e9)] and label == "run not complete (see Failures)" for x, label in seen)
    assert "red crosses on the x axis" in info.caption


def test_a_compute_sweep_draws_quality_against_training_flops(sweep, tmp_path):
    root, _ = sweep
    paths = write_report(root, tmp_path)
    assert (tmp_path / "figures" / "t_synthetic__compute.png").exists()
    assert "**Compute sweep: where each generator stops improving" in paths["markdown"].read_text()


def test_a_compute_sweeps_per_model_figures_draw_its_largest_budget(sweep, table):
    from ehrbench.reports.figures import shown_models

    _, t = sweep
    assert shown_models(t) == ([f"{g} [trainer.reference_steps=54]" for g in ("vae", "gan", "creep")],
                               " Rows of the largest budget only; the compute figure draws every budget.")
    _, one = table
    assert shown_models(one) == (list(one.models), "")  # one budget: every row


def test_a_compute_sweeps_regime_says_who_reached_its_schedule_and_who_still_changes(sweep, tmp_path):
    _, t = sweep
    r = regime(t, headline_metrics(t))
    assert "Regime at the largest budgets: short of its schedule: " in r  # every run at 1 % of its schedule
    assert "vae (1 %, on a plateau)" in r and "gan (1 %)" in r and "creep (1 %)" in r
    assert "early training" not in r and "Regime: early training" in regime(t)  # without headlines: the old reading
    t2 = build_tables(load_runs(make_sweep(tmp_path)))[0]
    t2.summary["fraction_of_paper"] = 2.0  # every run past its schedule
    r2 = regime(t2, headline_metrics(t2))
    assert "at or past its schedule, on a plateau: vae (200 %)" in r2
    assert "at or past its schedule, still changing: " in r2 and "gan (200 %)" in r2 and "short of" not in r2


def test_a_budget_that_failed_the_sanity_gate_is_a_hollow_marker_on_the_compute_figure():
    import matplotlib.pyplot as plt

    from ehrbench.reports.sweeps import _mark_failed

    d = pd.DataFrame({"model": ["vae [b=2]", "vae [b=2]", "vae [b=6]", "vae [b=6]"], "line": "vae",
                      "train_flops": [2e9, 2e9, 6e9, 6e9], "value": [0.1, 0.3, 0.7, 0.7]})
    fig, ax = plt.subplots()
    _mark_failed(ax, d, {"vae [b=2]"}, ["vae"], label=True)
    drawn = [c for c in ax.collections if len(c.get_offsets())]
    assert len(drawn) == 1 and drawn[0].get_offsets().tolist() == [[2e9, pytest.approx(0.2)]]  # the budget's mean
    assert (drawn[0].get_facecolors()[0] == 1).all()  # hollow: a white face in the line's colour
    assert ax.get_legend_handles_labels()[1] == ["failed the sanity gate (not ranked)"]
    plt.close(fig)


@pytest.mark.parametrize("per_seed", [False, True])
def test_the_first_screen_says_whether_the_seeds_shared_a_data_split(tmp_path, per_seed):
    from ehrbench.reports.headline import intervals_note

    for model in ("a", "b"):
        for seed in (0, 1, 2):
            d = make_run(tmp_path, model, seed, {"auc": 0.7 + seed / 100, "pearson": 0.9, "risk": 0.0}, npz=False)
            config = json.loads((d / "run.json").read_text())["config"]
            _set(d, config={**config, "data": {**config["data"], "split_seed": 0}, "split_from_seed": per_seed})
    (t,) = build_tables(load_runs(tmp_path))
    note = intervals_note(t)
    assert ("Each seed drew its own data split" in note) == per_seed
    assert ("Every seed used one data split (split seed 0)" in note) != per_seed
    assert note in write_report(tmp_path, tmp_path / "r")["markdown"].read_text()


def test_a_generator_keeps_its_colour_and_the_budgets_their_ticks_in_every_compute_panel(tmp_path, monkeypatch):
    """A generator without a value on one headline score (no TSTR from a constant label) must not shift the others'
    colours in that panel; the x axis names each budget's FLOPs (a short log axis has no decade tick)."""
    from ehrbench.reports import sweeps

    root = make_sweep(tmp_path, (("const", lambda k: None, 0.0), ("gan", lambda k: 0.6, 0.0), ("vae", lambda k: 0.7, 0.0)))
    t = build_tables(load_runs(root))[0]
    seen, real = [], sweeps._against_flops
    monkeypatch.setattr(sweeps, "_against_flops", lambda ax, d, hue, order, *a: seen.append((set(d[hue]), order, ax))
                        or real(ax, d, hue, order, *a))
    sweeps.fig_compute(t, tmp_path)
    assert any("const" not in lines for lines, _, _ in seen) and any("const" in lines for lines, _, _ in seen)
    assert all(order == ["const", "gan", "vae"] for _, order, _ in seen)
    ticks = seen[0][2].get_xticks()  # the budgets' mean FLOPs (gan's are 1 % above the others')
    assert ticks == pytest.approx([1e9 * s * (1 + 0.01 / 3) for s in (2, 6, 18, 54)])
